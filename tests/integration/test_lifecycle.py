"""Health reflects dependencies, and SIGTERM lets in-flight calls finish before the process exits."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_port, free_ports
from meshserve.inference.v1 import inference_pb2_grpc
from meshserve.launcher.mesh import REPO_ROOT
from services.feature.service import FeatureService
from services.feature.settings import FeatureSettings
from services.inference.service import InferenceService
from services.inference.settings import InferenceSettings
from services.inference.tritonserver import prepare_backend_dir, triton_command
from tests.helpers import FIXTURES, gateway_env

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(channel: grpc.aio.Channel, service: str = "") -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status


async def test_gateway_turns_serving_only_once_feature_and_inference_are(mesh, tmp_path):
    feature_port, inference_port = free_ports(2)
    gateway = GatewayService(
        GatewaySettings(
            port=0,
            feature_url=f"127.0.0.1:{feature_port}",
            cache_url=mesh.endpoints.cache,
            inference_url=f"127.0.0.1:{inference_port}",
            routes_path=FIXTURES / "routes.yaml",
            admin_port=0,
            http_port=0,
            audit_log=tmp_path / "audit.jsonl",
        )
    )
    started = []
    port = await gateway.start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client,
        ):
            assert await health(channel) == NOT_SERVING
            assert await health(channel, "inference.GRPCInferenceService") == NOT_SERVING
            assert not await client.is_server_ready()

            feature = FeatureService(FeatureSettings(port=feature_port))
            started.append(feature)
            await feature.start()
            await wait_until_serving(grpc.aio.insecure_channel(f"127.0.0.1:{feature_port}"), timeout_s=30)
            assert await health(channel) == NOT_SERVING  # inference is still missing

            inference = InferenceService(
                InferenceSettings(port=inference_port, triton_url=mesh.endpoints.triton_grpc)
            )
            started.append(inference)
            await inference.start()
            await wait_until_serving(channel, timeout_s=30)
            assert await health(channel, "meshserve.gateway.v1.PredictionService") == SERVING
            assert await client.is_server_ready()
    finally:
        await gateway.stop(0)
        for service in started:
            await service.stop(0)


async def test_inference_service_waits_for_the_models_it_requires(mesh):
    service = InferenceService(
        InferenceSettings(
            port=0, triton_url=mesh.endpoints.triton_grpc, required_models=["fraud:1", "fraud:2"]
        )
    )
    port = await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=30)
            assert await health(channel, "meshserve.inference.v1.InferenceService") == SERVING
    finally:
        await service.stop(0)


async def watch_until(channel: grpc.aio.Channel, status: int, timeout_s: float, service: str = "") -> None:
    """Until health says `status`, as grpc.health.v1's Watch pushes each change (no polling)."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))
    try:
        async with asyncio.timeout(timeout_s):
            async for reply in watch:
                if reply.status == status:
                    return
    finally:
        watch.cancel()


def _fraud_request() -> service_pb2.ModelInferRequest:
    row = np.array([[250.0, 3, 80.0, 2, 400]], dtype=np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
    return service_pb2.ModelInferRequest(
        model_name="fraud", inputs=[tensor], raw_input_contents=[row.tobytes()]
    )


async def test_inference_health_follows_triton_down_and_back_and_calls_work_again(tmp_path):
    """Triton of its own (the session's stays untouched): stopped, the inference service says NOT_SERVING;
    started again on the same port, SERVING, and its channels to Triton carry calls again."""
    grpc_port, http_port, metrics_port = free_ports(3)
    argv, env = triton_command(
        [REPO_ROOT / "model_repository"], grpc_port, http_port, metrics_port, prepare_backend_dir(tmp_path)
    )
    triton = ChildProcess("triton", argv, {**os.environ, **env}, tmp_path / "triton.log")
    service = InferenceService(InferenceSettings(port=0, triton_url=f"127.0.0.1:{grpc_port}"))
    name = "meshserve.inference.v1.InferenceService"
    try:
        await triton.start()
        port = await service.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = inference_pb2_grpc.InferenceServiceStub(channel).ModelInfer
            await wait_until_serving(channel, timeout_s=90)
            assert (await infer(_fraud_request(), timeout=10)).raw_output_contents

            await triton.stop(10)
            await watch_until(channel, NOT_SERVING, timeout_s=5)
            assert await health(channel, name) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await infer(_fraud_request(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            await triton.restart()
            await watch_until(channel, SERVING, timeout_s=90)
            assert await health(channel, name) == SERVING
            assert (await infer(_fraud_request(), timeout=10)).raw_output_contents
    finally:
        await service.stop(0)
        await triton.stop(10)
    log = (tmp_path / "triton.log").read_text()
    assert log.count("successfully loaded 'fraud'") == 2  # the second Triton really was a new one


def _slow_request() -> service_pb2.ModelInferRequest:
    row = np.ones((1, 5), dtype=np.float32)
    return service_pb2.ModelInferRequest(
        model_name="slow",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 5])
        ],
        raw_input_contents=[row.tobytes()],
    )


async def test_sigterm_lets_in_flight_calls_finish_then_exits_cleanly(mesh, marker_dir, tmp_path):
    port = free_port()
    env = gateway_env(mesh, port, tmp_path)
    gateway = ChildProcess("gateway", [sys.executable, "-m", "gateway"], env, tmp_path / "gateway.log")
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_serving(channel, timeout_s=60)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            markers_before = len(os.listdir(marker_dir))
            calls = [asyncio.ensure_future(stub.ModelInfer(_slow_request(), timeout=30)) for _ in range(6)]
            # wait until all six are inside the model (it drops a marker file per row before sleeping)
            deadline = time.monotonic() + 20
            while len(os.listdir(marker_dir)) < markers_before + 6:
                assert time.monotonic() < deadline, "slow requests never reached the model"
                await asyncio.sleep(0.02)
            gateway.process.send_signal(signal.SIGTERM)
            replies = await asyncio.gather(*calls)
            assert all(np.frombuffer(r.raw_output_contents[0], np.float32)[0] == 0.5 for r in replies)
            assert await asyncio.wait_for(gateway.process.wait(), 20) == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    service_pb2.ServerLiveRequest(), timeout=2
                )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await gateway.stop(2)
    log = (tmp_path / "gateway.log").read_text()
    assert '"msg": "draining"' in log and '"msg": "stopped"' in log
