"""Two real Triton replicas behind the inference service, answering as one Triton: statistics (read through a
gateway) are the sum of both, a replica killed under load fails no request (what it could not run goes once to
the other), and a replica that missed a load or an unload (down, or unreachable) is brought in line before it is
picked again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from pathlib import Path

import grpc
import tritonclient.grpc.aio as triton_aio

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from meshserve.core.channels import wait_until_serving
from meshserve.core.process import free_ports
from services.inference.picker import Replica
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.tritonserver import prepare_backend_dir
from tests.helpers import FIXTURES
from tests.integration.tritons import MODEL_INFER, Triton, busy_request, until


def _repository(root: Path) -> Path:
    for model in ("busy", "spare"):
        shutil.copytree(FIXTURES / "model_repository" / model, root / model)
    return root


@contextlib.asynccontextmanager
async def _two_replicas(tmp_path: Path, *triton_args: str, **settings):
    backend_dir = prepare_backend_dir(tmp_path / "triton")
    repository = _repository(tmp_path / "models")
    a, b = (Triton(n, repository, backend_dir, tmp_path, *triton_args) for n in ("a", "b"))
    service = InferenceService(
        InferenceSettings(
            port=0,
            triton_urls=[a.url, b.url],
            required_models=["busy"],
            triton_check_interval_s=0.25,
            dependency_timeout_s=60,
            **settings,
        )
    )
    try:
        await asyncio.gather(a.process.start(), b.process.start())
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        port = await service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=30)

            async def both_picked() -> bool:
                return len(service.triton.picker.healthy()) == 2

            await until(both_picked, 10, "the two replicas are not both picked from")
            yield a, b, service, channel, f"127.0.0.1:{port}"
    finally:
        await service.stop(0)
        await asyncio.gather(*(t.process.stop(30) for t in (a, b)))


@contextlib.asynccontextmanager
async def _gateway(inference: str, tmp_path: Path):
    """A gateway (in this process) in front of the inference service, serving each model under its own name; its
    feature and cache services are absent (statistics need neither)."""
    routes = tmp_path / "routes.yaml"
    routes.write_text("routes: {}\n")
    feature_port, cache_port = free_ports(2)
    settings = GatewaySettings(
        port=0, admin_port=0, http_port=0, metrics_port=0, routes_path=routes, audit_log=tmp_path / "audit.jsonl",
        feature_url=f"127.0.0.1:{feature_port}", cache_url=f"127.0.0.1:{cache_port}", inference_url=inference,
    )  # fmt: skip
    gateway = GatewayService(settings)
    port = await gateway.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await gateway.stop(0)


async def _send(channel: grpc.aio.Channel, count: int, in_flight: int, outcomes: Counter) -> None:
    call, request, left = channel.unary_unary(MODEL_INFER), busy_request(), [count]

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                await call(request, timeout=20)
                outcomes["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1

    await asyncio.gather(*(client() for _ in range(in_flight)))


async def test_statistics_are_the_sum_of_both_replicas_and_a_killed_replica_fails_no_request(tmp_path):
    async with _two_replicas(tmp_path) as (a, b, service, channel, address):
        outcomes: Counter = Counter()
        await _send(channel, 60, 6, outcomes)
        assert outcomes == Counter(ok=60), outcomes

        async def all_counted() -> bool:  # Triton counts an execution just after its answer has left
            return await a.inferences("busy") + await b.inferences("busy") == 60

        await until(all_counted, 10, "the replicas did not count 60 inferences")
        on_a, on_b = await a.inferences("busy"), await b.inferences("busy")
        assert on_a > 0 and on_b > 0, (on_a, on_b)  # spread over both

        async with (
            _gateway(address, tmp_path) as gateway_address,
            triton_aio.InferenceServerClient(
                gateway_address
            ) as mesh,  # the gateway, as a Triton client sees it
        ):
            stats = await mesh.get_inference_statistics("busy", client_timeout=10)
        assert [(m.name, m.version) for m in stats.model_stats] == [("busy", "1")]
        summed = stats.model_stats[0]
        assert summed.inference_count == 60
        assert summed.inference_stats.success.count == 60
        assert summed.execution_count == sum(b.compute_infer.count for b in summed.batch_stats)
        assert summed.execution_count <= 60

        # a kills one replica under load: what it was running, and what reaches it before it is taken out, goes
        # to the other once; no request fails
        outcomes.clear()
        sending = asyncio.create_task(_send(channel, 200, 6, outcomes))
        await until(lambda: _at_least(outcomes, 20), 30, "no traffic before the kill")
        a.process.signal(signal.SIGKILL)
        await a.process.wait()
        killed_at = sum(outcomes.values())
        await sending
        print(f"\n{killed_at} answered before the kill; outcomes {dict(outcomes)}")
        assert outcomes == Counter(ok=200), outcomes
        assert not service.triton.picker.replicas[0].healthy

        async with triton_aio.InferenceServerClient(address) as mesh:  # one replica left: its figures alone

            async def figures_of_b() -> bool:
                stats = await mesh.get_inference_statistics("busy", client_timeout=10)
                return stats.model_stats[0].inference_count == await b.inferences("busy")

            await until(figures_of_b, 10, "the mesh's statistics are not the remaining replica's")


async def _at_least(outcomes: Counter, count: int) -> bool:
    return sum(outcomes.values()) >= count


async def _healthy(replica: Replica, want: bool) -> None:
    async def reached() -> bool:
        return replica.healthy is want

    await until(reached, 60, f"replica {replica.name} not {'in' if want else 'out'} within 60 s")


async def test_a_replica_that_missed_a_load_or_an_unload_catches_up_before_it_is_picked(tmp_path):
    settings = {"triton_failed_checks": 1, "triton_check_timeout_s": 0.5}
    async with _two_replicas(tmp_path, "--load-model=busy", **settings) as (a, b, service, _, address):
        replica_b = service.triton.picker.replicas[1]
        assert not await a.ready("spare") and not await b.ready("spare")

        # b down (killed): spare is loaded through the mesh, on a alone
        b.process.signal(signal.SIGKILL)
        await b.process.wait()
        await _healthy(replica_b, False)
        async with triton_aio.InferenceServerClient(address) as mesh:
            await mesh.load_model("spare", client_timeout=60)
        assert await a.ready("spare")

        # b restarted (its repository as on disk: busy only): spare is loaded there before it is picked again
        await b.process.restart()
        await until(b.ready, 60, "b did not start again")
        await _healthy(replica_b, True)
        assert await b.ready("spare"), "b picked again before it had the model loaded meanwhile"
        assert ("spare", "1") in (replica_b.models or ())

        # b unreachable (stopped, not restarted): spare is unloaded through the mesh; b still holds it when it
        # answers again, and is picked again only once it is gone there too
        b.process.signal(signal.SIGSTOP)
        try:
            await _healthy(replica_b, False)
            async with triton_aio.InferenceServerClient(address) as mesh:
                await mesh.unload_model("spare", client_timeout=60)
            assert not await a.ready("spare")
        finally:
            b.process.signal(signal.SIGCONT)
        await _healthy(replica_b, True)
        assert not await b.ready("spare"), "b picked again while it still served a model unloaded meanwhile"
        assert await b.ready("busy")
