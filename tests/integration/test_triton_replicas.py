"""The inference service in front of several Triton replicas (real Triton processes on free ports): a slowed
replica gets little of the traffic, a replica started under load takes its share within seconds, no request
fails; and internal channels to several addresses balance round robin."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshserve.core.channels import open_channel, wait_until_serving
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.tritonserver import prepare_backend_dir
from tests.helpers import FIXTURES
from tests.integration.tritons import MODEL_INFER, Triton, busy_request, until

SLOW_SLEEP_S = 0.2  # the slowed copy of `busy` (25 ms per execution): eight times slower


def _repository(root: Path, sleep_s: float | None = None) -> Path:
    shutil.copytree(FIXTURES / "model_repository" / "busy", root / "busy")
    if sleep_s is not None:
        model = root / "busy" / "1" / "model.py"
        model.write_text(model.read_text().replace("time.sleep(0.025)", f"time.sleep({sleep_s})"))
    return root


async def test_a_slowed_replica_gets_little_traffic_and_a_new_one_takes_its_share_at_once(tmp_path):
    backend_dir = prepare_backend_dir(tmp_path / "triton")
    fast_repo = _repository(tmp_path / "fast")
    fast, slow, late = (
        Triton("fast", fast_repo, backend_dir, tmp_path),
        Triton("slow", _repository(tmp_path / "slow", SLOW_SLEEP_S), backend_dir, tmp_path),
        Triton("late", fast_repo, backend_dir, tmp_path),
    )
    service = InferenceService(
        InferenceSettings(
            port=0,
            triton_urls=[fast.url, slow.url, late.url],
            required_models=["busy"],
            triton_check_interval_s=0.25,
            dependency_timeout_s=60,
        )
    )
    outcomes: Counter = Counter()
    stop = asyncio.Event()
    try:
        await asyncio.gather(fast.process.start(), slow.process.start())
        await asyncio.gather(fast.wait_ready(), slow.wait_ready())
        port = await service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=30)  # two of three replicas: SERVING
            picker = service.triton.picker

            async def two_healthy() -> bool:
                return len(picker.healthy()) == 2

            await until(two_healthy, 10, "fast and slow replicas not both picked from")
            call = channel.unary_unary(MODEL_INFER)
            request = busy_request()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        await call(request, timeout=10)
                        outcomes["ok"] += 1
                    except grpc.aio.AioRpcError as exc:
                        outcomes[exc.code().name] += 1

            clients = [asyncio.create_task(client()) for _ in range(6)]
            await asyncio.sleep(4)  # steady load on fast + slow
            split = {"fast": await fast.inferences("busy"), "slow": await slow.inferences("busy")}
            print(f"\nfast vs slowed replica, 6 in flight for 4 s: {split}")
            assert split["fast"] >= 0.85 * (split["fast"] + split["slow"]), split

            await late.process.start()  # a third replica joins under load
            await late.wait_ready()
            ready_at = time.monotonic()

            async def late_serving() -> bool:
                return await late.inferences("busy") > 0

            await until(late_serving, 5, "the new replica took no traffic within 5 s")
            took_s = time.monotonic() - ready_at
            before = {"fast": await fast.inferences("busy"), "late": await late.inferences("busy")}
            await asyncio.sleep(2)
            after = {"fast": await fast.inferences("busy"), "late": await late.inferences("busy")}
            share = {k: after[k] - before[k] for k in after}
            print(
                f"new replica served {took_s:.2f} s after ready; next 2 s fast vs new: {share}; {dict(outcomes)}"
            )
            stop.set()
            await asyncio.gather(*clients)
            assert share["late"] >= 0.25 * (share["late"] + share["fast"]), share
            assert set(outcomes) == {"ok"}, outcomes
    finally:
        stop.set()
        await service.stop(0)
        await asyncio.gather(*(t.process.stop(30) for t in (fast, slow, late)))


async def test_a_channel_to_several_addresses_spreads_calls_round_robin():
    class Counting(health.HealthServicer):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        async def Check(self, request, context):
            self.calls += 1
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    servers, servicers, ports = [], [], []
    for _ in range(3):
        server, servicer = grpc.aio.server(), Counting()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        servicers.append(servicer)
    try:
        target = ",".join(f"127.0.0.1:{p}" for p in ports)
        async with open_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(60):
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        calls = [s.calls for s in servicers]
        assert sum(calls) == 60 and min(calls) >= 10, calls  # early calls go to whichever connected first
        async with open_channel(f"127.0.0.1:{ports[0]}") as channel:  # one address: as before
            for _ in range(5):
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert servicers[0].calls == calls[0] + 5
    finally:
        await asyncio.gather(*(s.stop(0) for s in servers))
