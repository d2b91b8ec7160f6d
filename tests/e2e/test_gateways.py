"""Several gateway processes on one port set (`meshserve up --gateways 2`): the kernel spreads connections across
them, and killing one under load loses no request a well-behaved client retries, while the supervisor restarts it.

A call in flight on the killed process dies with its connection (UNAVAILABLE, as behind any balancer); the
client's retry policy, the one gRPC's service config offers, sends it again on a new connection, which only a
living process can accept. What must hold is that the port never stops serving: zero errors reach the caller.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.api.http_server import _listening_socket
from meshserve.core.lifecycle import GrpcService
from meshserve.core.process import free_ports
from meshserve.core.settings import ServiceSettings
from meshserve.core.supervision import ChildRecovered, SupervisionEvent
from meshserve.launcher.mesh import LocalMesh, MeshSettings
from tests.helpers import scrape

CONNECTIONS = 16  # each its own TCP connection, so SO_REUSEPORT has something to spread
MODEL_INFER = 'method="/inference.GRPCInferenceService/ModelInfer"'
RETRY = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def infer_request() -> service_pb2.ModelInferRequest:
    rows = np.array([[250.0, 3, 80.0, 2, 400]], dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="fraud")
    request.inputs.add(name="features", datatype="FP32", shape=list(rows.shape))
    request.raw_input_contents.append(rows.tobytes())
    return request


def connections(target: str) -> list[grpc.aio.Channel]:
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.service_config", RETRY),
        ("grpc.enable_retries", 1),
    ]
    return [grpc.aio.insecure_channel(target, options=options) for _ in range(CONNECTIONS)]


def model_infer_ok(url: str) -> float:
    return sum(
        value
        for series, value in scrape(url).items()
        if series.startswith("meshserve_gateway_rpc_requests_total{") and MODEL_INFER in series
        and 'code="OK"' in series
    )  # fmt: skip


class _Empty(GrpcService):
    name = "empty"

    def register(self, server):
        return []


async def test_grpc_servers_share_a_port_only_with_reuse_port():
    (port,) = free_ports(1)
    first = _Empty(ServiceSettings(port=port, reuse_port=True))
    second = _Empty(ServiceSettings(port=port, reuse_port=True))
    assert await first.start() == port and await second.start() == port
    try:
        # off, as by default: a taken port is an error (grpc's own RuntimeError)
        with pytest.raises((OSError, RuntimeError), match="bind|cannot listen"):
            await _Empty(ServiceSettings(port=port)).start()
    finally:
        await first.stop(0)
        await second.stop(0)


def test_rest_sockets_share_a_port_only_with_reuse_port():
    first = _listening_socket("127.0.0.1", 0, reuse_port=True)
    port = first.getsockname()[1]
    try:
        second = _listening_socket("127.0.0.1", port, reuse_port=True)
        second.close()
        with pytest.raises(OSError):
            _listening_socket("127.0.0.1", port)
    finally:
        first.close()


@pytest.fixture
async def two_gateways(tmp_path):
    recovered: dict[str, asyncio.Event] = {"gateway": asyncio.Event(), "gateway-2": asyncio.Event()}

    def heard(event: SupervisionEvent) -> None:
        if isinstance(event, ChildRecovered) and event.name in recovered:
            recovered[event.name].set()

    mesh = LocalMesh(
        MeshSettings(
            gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path / "run", gateways=2,
            grace_s=3.0, restart_backoff_s=0.2,
        )
    )  # fmt: skip
    await mesh.start(on_event=heard)
    try:
        yield mesh, recovered
    finally:
        await mesh.stop()


async def test_two_gateways_serve_one_port_and_survive_a_kill(two_gateways):
    mesh, recovered = two_gateways
    ep = mesh.endpoints
    metrics = {name: ep.service_metrics[name] for name in ("gateway", "gateway-2")}
    request, errors, answered = infer_request(), [], [0]
    counted = asyncio.Condition()

    async def until_answered(count: int) -> None:
        async with counted:
            await counted.wait_for(lambda: answered[0] >= count)

    channels = connections(ep.gateway)
    stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]

    async def caller(stub, until: asyncio.Event | None, count: int = 0) -> None:
        done = 0
        while (until is None and done < count) or (until is not None and not until.is_set()):
            try:
                reply = await stub.ModelInfer(request, timeout=10)
                assert reply.model_name == "fraud"
                answered[0] += 1
                async with counted:
                    counted.notify_all()
            except grpc.aio.AioRpcError as exc:
                errors.append(exc.code())
            done += 1

    try:
        # both processes take connections, hence traffic
        await asyncio.gather(*(caller(stub, None, 10) for stub in stubs))
        assert errors == [] and answered[0] == 10 * CONNECTIONS
        served = {name: model_infer_ok(url) for name, url in metrics.items()}
        assert all(count > 0 for count in served.values()), served
        assert sum(served.values()) == answered[0]

        # SIGKILL one under load: its calls are retried on the other, and the supervisor brings it back
        victim = mesh.children["gateway-2"]
        starts = victim.starts
        stop = asyncio.Event()
        load = [asyncio.create_task(caller(stub, stop)) for stub in stubs]
        before = answered[0]
        async with asyncio.timeout(90):
            await until_answered(before + 100)
            os.kill(victim.process.pid, signal.SIGKILL)
            await recovered["gateway-2"].wait()
            await until_answered(answered[0] + 100)  # still serving after the restart
        stop.set()
        await asyncio.gather(*load)
        assert errors == [], errors
        assert answered[0] - before >= 200
        assert victim.starts == starts + 1 and mesh.children["gateway"].starts == 1
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))

    # the restarted process takes new connections again
    fresh = connections(ep.gateway)
    try:
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in fresh]
        await asyncio.gather(*(caller(stub, None, 3) for stub in stubs))
        assert errors == [] and model_infer_ok(metrics["gateway-2"]) > 0
    finally:
        await asyncio.gather(*(channel.close() for channel in fresh))
