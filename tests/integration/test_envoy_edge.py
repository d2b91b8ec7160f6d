"""A real Envoy, configured by `meshserve deploy envoy`'s generator, in front of the session mesh's gateway.

Clients that work against the gateway must work unchanged through the edge: same scores, same status codes,
same trailing metadata, and the caller's request id still reaches the gateway.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from meshserve.core.process import ChildProcess, free_ports
from meshserve.deploy.envoy import deploy_envoy, local_settings
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import feature_vector, score_directly

ENVOY = Path(sys.executable).parent / "envoy"
STARTUP_TIMEOUT_S = 60.0
ROWS = np.vstack(
    [
        feature_vector("acct-00041", amount=25.0, merchant_category=1),
        feature_vector("acct-00042", amount=4_800.0, merchant_category=7),
    ]
)


def instance(account: str, amount: float, category: int = 3) -> gateway_pb2.Instance:
    return gateway_pb2.Instance(
        entity_key=account,
        features={
            "amount": feature_pb2.Value(double_value=amount),
            "merchant_category": feature_pb2.Value(int64_value=category),
        },
    )


def _admin_ready(admin: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


async def _await(check, what: str, envoy: ChildProcess) -> None:
    """Poll `check` (async, returns bool) until true; fail with Envoy's log if it exits or time runs out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not await check():
        assert not envoy.exited, f"envoy exited while waiting for {what}:\n{envoy.log_tail(40)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{envoy.log_tail(40)}"
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(scope="module")
async def edge(mesh, tmp_path_factory):
    """Envoy's listener address; Envoy is stopped (and must exit cleanly) after the module's tests."""
    run_dir = tmp_path_factory.mktemp("envoy")
    gateway_host, gateway_port = mesh.endpoints.gateway.rsplit(":", 1)
    listen_port, admin_port = free_ports(2)
    settings = local_settings(
        listen_port=listen_port,
        admin_port=admin_port,
        gateway_host=gateway_host,
        gateway_port=int(gateway_port),
        health_check_interval_s=0.5,
    )
    config = deploy_envoy(run_dir / "envoy.yaml", settings)
    argv = [str(ENVOY), "-c", str(config), "--concurrency", "2", "--log-level", "warn"]
    argv += ["--file-flush-interval-msec", "100"]  # access log lines show up at once, not every 10 s
    # its own shared-memory id, so it never meets another Envoy on this machine (a parallel run, a stale one)
    argv += ["--base-id", str(os.getpid() % 60_000 + 1), "--disable-hot-restart"]
    envoy = ChildProcess("envoy", argv, dict(os.environ), run_dir / "envoy.log")
    await envoy.start()
    try:
        admin, address = f"127.0.0.1:{admin_port}", f"127.0.0.1:{listen_port}"
        await _await(lambda: asyncio.to_thread(_admin_ready, admin), "admin /ready", envoy)

        async def gateway_ready_through_envoy() -> bool:
            async with triton_aio.InferenceServerClient(address) as client:
                try:
                    return await client.is_server_ready(client_timeout=2)
                except InferenceServerException:  # no healthy gateway yet: UNAVAILABLE
                    return False

        await _await(gateway_ready_through_envoy, "a healthy gateway through envoy", envoy)
        yield address, envoy
    finally:
        code = await envoy.stop(grace=5)
    assert code == 0, envoy.log_tail(40)


def infer_input(matrix: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    return tensor


def test_unmodified_tritonclient_gets_the_gateways_scores_through_envoy(mesh, edge):
    address, _ = edge
    through_envoy = triton_grpc.InferenceServerClient(address).infer("fraud", [infer_input(ROWS)])
    direct = triton_grpc.InferenceServerClient(mesh.endpoints.gateway).infer("fraud", [infer_input(ROWS)])
    assert through_envoy.get_response().model_version == direct.get_response().model_version == "1"
    np.testing.assert_array_equal(through_envoy.as_numpy("score"), direct.as_numpy("score"))
    np.testing.assert_allclose(
        through_envoy.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS)
    )


async def test_predict_through_envoy(mesh, edge):
    address, _ = edge
    request = gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00043", 120.0, 2)])
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert (reply.route, reply.variant, reply.model_version) == ("fraud-v2", "candidate", "2")
    expected = score_directly(
        mesh.endpoints.triton_grpc, feature_vector("acct-00043", amount=120.0, merchant_category=2), "2"
    )
    assert reply.predictions[0].score == pytest.approx(float(expected[0]), abs=1e-6)


async def test_unknown_route_is_not_found_through_envoy_and_the_next_call_succeeds(edge):
    address, _ = edge
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(
                gateway_pb2.PredictRequest(route="no-such-route", instances=[instance("acct-00044", 1.0)]),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-route" in caught.value.details()
        reply = await stub.Predict(
            gateway_pb2.PredictRequest(route="fraud", instances=[instance("acct-00044", 1.0)]), timeout=10
        )
        assert reply.variant == "stable"
    with pytest.raises(InferenceServerException) as oip:
        triton_grpc.InferenceServerClient(address).infer("no-such-route", [infer_input(ROWS)])
    assert oip.value.status() == "StatusCode.NOT_FOUND"


def test_variant_header_goes_in_and_trailing_metadata_comes_back_through_envoy(edge):
    address, _ = edge
    request = service_pb2.ModelInferRequest(
        model_name="fraud",
        inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="features",
                datatype="FP32",
                shape=list(ROWS.shape),
                contents={"fp32_contents": ROWS.ravel()},
            )
        ],
    )
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, default = stub.ModelInfer.with_call(request, timeout=10)
        _, forced = stub.ModelInfer.with_call(
            request, timeout=10, metadata=(("x-meshserve-variant", "canary"),)
        )
    assert dict(default.trailing_metadata())["x-meshserve-variant"] == "stable"
    trailing = dict(forced.trailing_metadata())
    assert (trailing["x-meshserve-variant"], trailing["x-meshserve-model-version"]) == ("canary", "2")


async def test_callers_request_id_reaches_the_gateway_and_envoys_access_log(mesh, edge):
    address, envoy = edge
    request_id = f"edge-{os.getpid()}-7c1e"
    async with grpc.aio.insecure_channel(address) as channel:
        await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
            gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00045", 9.0)]),
            metadata=(("x-request-id", request_id),),
            timeout=10,
        )
    assert f'"request_id": "{request_id}"' in mesh.children["gateway"].log_path.read_text()
    # Envoy writes its access log line after the call completes; give it a moment, bounded
    for _ in range(50):
        if request_id in envoy.log_path.read_text():
            break
        await asyncio.sleep(0.1)
    assert request_id in envoy.log_path.read_text()
