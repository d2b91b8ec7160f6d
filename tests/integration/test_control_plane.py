"""Three gateway processes, one control store (a Redis of this module's own, so it can be killed): weights set
through one are served by all three within a second, a restarted gateway serves the live weights, and with the
store gone every gateway keeps serving while admin writes are refused with UNAVAILABLE, converging again once it
is back."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Callable

import grpc
import pytest
import pytest_asyncio

from meshserve.admin.v1 import admin_pb2, admin_pb2_grpc
from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import scrape

ROUTES = """
routes:
  fraud:
    timeout_ms: 5000
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
    # judged on errors only (a generous p99 ratio: real latencies are noisy)
    rollout: {canary: canary, steps: [50, 90], interval_s: 0.5, min_requests: 5, max_p99_ratio: 100}
"""
CONVERGE_S = 1.0


class Replica:
    def __init__(self, process: ChildProcess, port: int, admin_port: int, metrics_port: int) -> None:
        self.process = process
        self.port, self.admin_port, self.metrics_url = (
            port,
            admin_port,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.admin = admin_pb2_grpc.AdminServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{admin_port}"))
        self.predict_stub = gateway_pb2_grpc.PredictionServiceStub(self.channel)

    async def start(self) -> None:
        await self.process.restart() if self.process.starts else await self.process.start()
        try:
            await wait_until_serving(self.channel, timeout_s=60)
        except Exception:
            pytest.fail(f"gateway never served:\n{self.process.log_tail(40)}")

    async def weights(self) -> dict[str, float]:
        reply = await self.admin.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=5)
        route = next(r for r in reply.routes if r.route == "fraud")
        return {v.name: v.weight for v in route.variants}

    async def variants_served(self, n: int = 5) -> set[str]:
        request = gateway_pb2.PredictRequest(route="fraud", instances=[gateway_pb2.Instance(
            entity_key="acct-00011", features={"amount": feature_pb2.Value(double_value=90.0),
                                               "merchant_category": feature_pb2.Value(int64_value=4)})])  # fmt: skip
        replies = await asyncio.gather(*(self.predict_stub.Predict(request, timeout=10) for _ in range(n)))
        return {r.predictions[0].variant for r in replies}

    def store_up(self) -> float:
        return scrape(self.metrics_url)["meshserve_gateway_control_store_up"]


async def until(condition: Callable[[], object], timeout_s: float, what: str) -> float:
    """Seconds until the (async) condition holds; fails after timeout_s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    pytest.fail(f"not within {timeout_s} s: {what}")


def redis_process(run_dir, port: int) -> ChildProcess:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: `apt-get install -y redis-server` (.ci/run does)"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(run_dir)]  # fmt: skip
    return ChildProcess("redis", argv, {}, run_dir / "redis.log")


async def redis_ready(port: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis(port=port)

    async def pong():
        try:
            return await client.ping()
        except (aioredis.ConnectionError, OSError):
            return False

    await until(pong, 10, "redis-server answers")
    await client.aclose()


@pytest_asyncio.fixture(scope="module", params=["redis", "sqlite"])
async def cluster(request, mesh, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("control-plane")
    (run_dir / "routes.yaml").write_text(ROUTES)
    redis_port, *ports = free_ports(10)
    redis = redis_process(run_dir, redis_port)
    await redis.start()
    await redis_ready(redis_port)
    store = (
        f"redis://127.0.0.1:{redis_port}/0" if request.param == "redis" else f"sqlite:///{run_dir}/control.db"
    )
    replicas = []
    for i in range(3):
        port, admin_port, metrics_port = ports[3 * i : 3 * i + 3]
        env = {
            "PORT": port, "ADMIN_PORT": admin_port, "METRICS_PORT": metrics_port, "HTTP": "false",
            "ROUTES_PATH": run_dir / "routes.yaml", "AUDIT_LOG": run_dir / f"audit-{i}.jsonl",
            "FEATURE_URL": mesh.endpoints.feature, "CACHE_URL": mesh.endpoints.cache,
            "INFERENCE_URL": mesh.endpoints.inference, "CONTROL_STORE": store,
            "GRACE_S": 1, "SHUTDOWN_SETTLE_S": 0.05, "LOG_LEVEL": "INFO",
        }  # fmt: skip
        full_env = {
            **dict(__import__("os").environ),
            **{f"MESHSERVE_GATEWAY_{k}": str(v) for k, v in env.items()},
        }
        process = ChildProcess(
            f"gateway-{i}", [sys.executable, "-m", "gateway"], full_env, run_dir / f"gw{i}.log"
        )
        replicas.append(Replica(process, port, admin_port, metrics_port))
    await asyncio.gather(*(r.start() for r in replicas))
    yield replicas, (redis if request.param == "redis" else None), redis_port
    await asyncio.gather(*(r.process.stop(5) for r in replicas))
    await redis.stop(5)


async def set_weights(replica: Replica, stable: float, canary: float) -> None:
    request = admin_pb2.SetWeightsRequest(route="fraud", weights={"stable": stable, "canary": canary})
    await replica.admin.SetWeights(request, timeout=5)


async def converged(replicas: list[Replica], expected: dict[str, float]) -> list[float]:
    """Seconds each replica took to serve `expected` (from now)."""

    async def on(replica):
        return await until(lambda: _equal(replica, expected), 5, f"gateway {replica.port} serves {expected}")

    return await asyncio.gather(*(on(r) for r in replicas))


async def _equal(replica: Replica, expected: dict[str, float]) -> bool:
    return await replica.weights() == expected


async def test_weights_set_through_one_gateway_are_served_by_all_within_a_second(cluster):
    replicas, _, _ = cluster
    assert {r.store_up() for r in replicas} == {1.0}
    await set_weights(replicas[0], 0, 100)
    took = await converged(replicas, {"stable": 0.0, "canary": 100.0})
    print("converged in", [f"{t * 1000:.0f} ms" for t in took])
    assert max(took) < CONVERGE_S, took
    for replica in replicas:  # and served that way, not only listed
        assert await replica.variants_served() == {"canary"}
    # one audit log, whichever replica is asked
    audit = (await replicas[2].admin.GetAuditLog(admin_pb2.GetAuditLogRequest(limit=5), timeout=5)).entries
    assert [(e.action, e.route) for e in audit][-1] == ("set_weights", "fraud")


async def test_a_restarted_gateway_serves_the_live_weights_not_its_routes_file(cluster):
    replicas, _, _ = cluster
    await set_weights(replicas[1], 20, 80)
    await converged(replicas, {"stable": 20.0, "canary": 80.0})
    restarted = replicas[2]
    await restarted.process.stop(5)
    await restarted.start()
    assert await restarted.weights() == {"stable": 20.0, "canary": 80.0}  # from its first call on


def judges(replicas: list[Replica]) -> list[Replica]:
    return [
        r
        for r in replicas
        if not r.process.exited and scrape(r.metrics_url)["meshserve_gateway_rollout_judge"]
    ]


async def test_one_gateway_judges_rollouts_and_another_takes_over_when_it_dies(cluster):
    replicas, _, _ = cluster
    await until(lambda: len(judges(replicas)) == 1, 5, "one rollout judge")
    (holder,) = judges(replicas)
    holder.process.signal(9)  # dies without a word: its lease expires (2 s) and another replica takes it
    await holder.process.wait()
    took = await until(lambda: len(judges(replicas)) == 1, 10, "another gateway takes over the judge's lease")
    print(f"judge taken over in {took:.2f} s")
    await holder.start()
    assert len(judges(replicas)) == 1


async def rollout_state(replica: Replica) -> str:
    reply = await replica.admin.ListRoutes(admin_pb2.ListRoutesRequest(), timeout=5)
    return next(r for r in reply.routes if r.route == "fraud").rollout.state


async def _completed(replica: Replica) -> bool:
    return await rollout_state(replica) == "completed"


async def test_the_judge_decides_on_the_traffic_of_every_gateway(cluster):
    # Traffic only through the gateways that do not judge: the judge sees none of its own, so the rollout can
    # only advance (and complete) on the outcomes the others publish to the store.
    replicas, _, _ = cluster
    await until(lambda: len(judges(replicas)) == 1, 5, "one rollout judge")
    (judge,) = judges(replicas)
    others = [r for r in replicas if r is not judge]
    start = admin_pb2.SetRolloutRequest(route="fraud", action=admin_pb2.SetRolloutRequest.START)
    await judge.admin.SetRollout(start, timeout=5)
    deadline = time.monotonic() + 30
    while (state := await rollout_state(judge)) == "running" and time.monotonic() < deadline:
        await asyncio.gather(*(r.variants_served(10) for r in others))
    assert state == "completed", state
    for replica in replicas:  # every gateway shows it, and serves the canary's last step
        await until(lambda r=replica: _completed(r), 5, f"gateway {replica.port} shows the rollout completed")
    await converged(replicas, {"stable": 10.0, "canary": 90.0})
    assert not judge.process.exited and judges(replicas) == [judge]  # judged where it started, not elsewhere


async def test_without_the_store_gateways_keep_serving_and_refuse_changes_until_it_is_back(cluster):
    replicas, redis, redis_port = cluster
    if redis is None:
        pytest.skip("an outage is Redis's: a SQLite file on the gateways' own machine does not go away")
    await set_weights(replicas[0], 0, 100)
    await converged(replicas, {"stable": 0.0, "canary": 100.0})
    await redis.stop(0)  # SIGKILL at once: the store is gone
    await until(lambda: all(r.store_up() == 0 for r in replicas), 5, "every gateway reports the store down")
    for replica in replicas:
        assert await replica.variants_served() == {"canary"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await set_weights(replicas[1], 100, 0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert f"control store redis://127.0.0.1:{redis_port}/0 is unreachable" in refused.value.details()
    assert {tuple((await r.weights()).values()) for r in replicas} == {(0.0, 100.0)}  # nobody diverged

    await redis.restart()  # same port, same append-only file: the store comes back with its revision
    await redis_ready(redis_port)
    await until(lambda: all(r.store_up() == 1 for r in replicas), 5, "every gateway reports the store up")
    await set_weights(replicas[1], 100, 0)
    took = await converged(replicas, {"stable": 100.0, "canary": 0.0})
    print("converged in", [f"{t * 1000:.0f} ms" for t in took])
    assert max(took) < CONVERGE_S, took
