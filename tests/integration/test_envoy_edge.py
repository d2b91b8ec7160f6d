"""A real Envoy, configured by `meshserve deploy envoy`'s generator, in front of the session mesh's gateway.

Clients that work against the gateway must work unchanged through the edge, over gRPC and over REST (the Open
Inference Protocol over HTTP, on the same listener): same scores, same status codes, same trailing metadata and
headers, and the caller's request id still reaches the gateway. The edge counts calls per gRPC
method, passes a caller's deadline on (capped), retries nothing a gateway answered, and traces into the
caller's trace with the gateway's span beneath its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import pytest
import pytest_asyncio
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
import yaml
from opentelemetry.propagate import inject
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from meshserve.core.channels import wait_until_serving
from meshserve.core.process import ChildProcess, free_ports
from meshserve.deploy.envoy import envoy_config, local_settings
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.helpers import FIXTURES, feature_vector, score_directly
from tests.otlp_receiver import OtlpReceiver

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


def _get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    return _rest(address, "GET", path)


def _rest(
    address: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request, as curl would send it: (status, headers, body); 0 when nothing answers."""
    request = urllib.request.Request(f"http://{address}{path}", body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (urllib.error.URLError, OSError):
        return 0, {}, b""


class Edge(NamedTuple):
    address: str  # the listener: gRPC, and REST by content-type
    envoy: ChildProcess
    admin: str
    metrics: str  # the listener serving only /stats/prometheus


@contextlib.asynccontextmanager
async def running_envoy(
    run_dir: Path, gateway: str, gateway_http: str, **overrides: object
) -> AsyncIterator[Edge]:
    """Envoy, once it reaches a healthy gateway over gRPC and over REST; it must exit cleanly."""
    gateway_host, gateway_port = gateway.rsplit(":", 1)
    listen_port, admin_port, metrics_port = free_ports(3)
    settings = local_settings(
        listen_port=listen_port,
        admin_port=admin_port,
        metrics_port=metrics_port,
        gateway_host=gateway_host,
        gateway_port=int(gateway_port),
        gateway_http_port=int(gateway_http.rsplit(":", 1)[1]),
        health_check_interval_s=0.5,
        **overrides,
    )
    config = envoy_config(settings)
    # spans leave at once rather than every 5 s (Envoy's runtime keys, not part of the deployed config)
    layer = {"tracing.opentelemetry.flush_interval_ms": 100, "tracing.opentelemetry.min_flush_spans": 1}
    config["layered_runtime"] = {"layers": [{"name": "test", "static_layer": layer}]}
    path = run_dir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [str(ENVOY), "-c", str(path), "--concurrency", "2", "--log-level", "warn"]
    argv += ["--file-flush-interval-msec", "100"]  # access log lines show up at once, not every 10 s
    # its own shared-memory id, so it never meets another Envoy on this machine (a parallel run, a stale one)
    argv += ["--base-id", str((os.getpid() + listen_port) % 60_000 + 1), "--disable-hot-restart"]
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

        async def rest_ready_through_envoy() -> bool:  # its REST cluster is health-checked on its own
            return (await asyncio.to_thread(_get, address, "/v2/health/ready"))[0] == 200

        await _await(rest_ready_through_envoy, "the gateway's REST port through envoy", envoy)
        yield Edge(address, envoy, admin, f"127.0.0.1:{metrics_port}")
    finally:
        code = await envoy.stop(grace=5)
    assert code == 0, envoy.log_tail(40)


@pytest_asyncio.fixture(scope="module")
async def edge(mesh, tmp_path_factory):
    """Envoy in front of the session mesh's gateway."""
    edge_dir = tmp_path_factory.mktemp("envoy")
    async with running_envoy(edge_dir, mesh.endpoints.gateway, mesh.endpoints.gateway_http) as running:
        yield running


def infer_input(matrix: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("features", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    return tensor


def test_unmodified_tritonclient_gets_the_gateways_scores_through_envoy(mesh, edge):
    address = edge.address
    through_envoy = triton_grpc.InferenceServerClient(address).infer("fraud", [infer_input(ROWS)])
    direct = triton_grpc.InferenceServerClient(mesh.endpoints.gateway).infer("fraud", [infer_input(ROWS)])
    assert through_envoy.get_response().model_version == direct.get_response().model_version == "1"
    np.testing.assert_array_equal(through_envoy.as_numpy("score"), direct.as_numpy("score"))
    np.testing.assert_allclose(
        through_envoy.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS)
    )


JSON = {"Content-Type": "application/json"}


def _rest_body(matrix: np.ndarray, request_id: str = "edge-rest") -> bytes:
    tensor = {"name": "features", "shape": list(matrix.shape), "datatype": "FP32", "data": matrix.tolist()}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


def test_rest_inference_through_envoy_gets_the_gateways_scores(mesh, edge):
    """A curl-like JSON POST to Envoy's listener reaches the gateway's REST port: Triton's scores, the answer's
    id, and the gateway's routing headers come back; tritonclient.http works unchanged against the edge too."""
    status, headers, body = _rest(edge.address, "POST", "/v2/models/fraud/infer", _rest_body(ROWS), JSON)
    assert status == 200, body
    answer = json.loads(body)
    (score,) = answer["outputs"]
    assert (answer["id"], answer["model_version"], score["shape"]) == ("edge-rest", "1", [2, 1])
    expected = score_directly(mesh.endpoints.triton_grpc, ROWS)
    np.testing.assert_allclose(score["data"], expected, rtol=1e-6)
    assert (headers["x-meshserve-variant"], headers["x-meshserve-model-version"]) == ("stable", "1")
    client = triton_http.InferenceServerClient(edge.address)
    tensor = triton_http.InferInput("features", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)  # binary tensor data, both ways
    result = client.infer("fraud", [tensor], model_version="2")
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_allclose(
        result.as_numpy("score")[:, 0], score_directly(mesh.endpoints.triton_grpc, ROWS, "2")
    )
    assert client.is_server_ready() and client.is_model_ready("fraud")


def test_rest_errors_come_back_through_envoy_as_the_gateway_gives_them_and_the_next_call_succeeds(edge):
    status, _, body = _rest(edge.address, "POST", "/v2/models/no-such-route/infer", _rest_body(ROWS), JSON)
    assert status == 404 and "no-such-route" in json.loads(body)["error"]
    status, _, body = _rest(edge.address, "POST", "/v2/models/fraud/infer", b"{not json", JSON)
    assert status == 400 and "error" in json.loads(body)
    status, _, body = _rest(edge.address, "POST", "/v2/models/fraud/infer", _rest_body(ROWS), JSON)
    assert status == 200, body


async def test_rest_calls_are_counted_apart_and_logged_with_the_callers_request_id(mesh, edge):
    request_id = f"edge-{os.getpid()}-rest"
    headers = {**JSON, "x-request-id": request_id}
    status, _, _ = await asyncio.to_thread(
        _rest, edge.address, "POST", "/v2/models/fraud/infer", _rest_body(ROWS), headers
    )
    assert status == 200
    line = await _access_log_line(edge.envoy, request_id)
    assert (line["method"], line["http_status"], line["attempts"]) == ("/v2/models/fraud/infer", 200, 1)
    assert line["upstream_host"] == mesh.endpoints.gateway_http  # the REST port, not the gRPC one
    assert (await asyncio.to_thread(_counter, edge.admin, "cluster.gateway_rest.upstream_rq_2xx")) >= 1


def _counter(admin: str, name: str) -> int:
    """One of Envoy's counters (`/stats`)."""
    with urllib.request.urlopen(f"http://{admin}/stats?filter=^{re.escape(name)}$", timeout=5) as reply:
        (line,) = reply.read().decode().splitlines()
    return int(line.rpartition(": ")[2])


async def test_predict_through_envoy(mesh, edge):
    address = edge.address
    request = gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00043", 120.0, 2)])
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert (reply.route, reply.variant, reply.model_version) == ("fraud-v2", "candidate", "2")
    expected = score_directly(
        mesh.endpoints.triton_grpc, feature_vector("acct-00043", amount=120.0, merchant_category=2), "2"
    )
    assert reply.predictions[0].score == pytest.approx(float(expected[0]), abs=1e-6)


async def test_unknown_route_is_not_found_through_envoy_and_the_next_call_succeeds(edge):
    address = edge.address
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
    address = edge.address
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
    address, envoy = edge.address, edge.envoy
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


def _grpc_counters(admin: str) -> dict[str, int]:
    """Envoy's grpc_stats counters for the gateway cluster, by name (`/stats`, counters only)."""
    with urllib.request.urlopen(
        f"http://{admin}/stats?filter=^cluster\\.gateway\\.grpc\\.", timeout=5
    ) as reply:
        lines = reply.read().decode().splitlines()
    return {
        name: int(value) for name, _, value in (line.partition(": ") for line in lines) if value.isdigit()
    }


def test_envoy_counts_each_grpc_method_with_its_outcomes(edge):
    """Per-method request, success and failure counts (grpc_stats), as Prometheus scrapes them from Envoy's
    metrics listener."""
    address, admin, metrics = edge.address, edge.admin, edge.metrics
    predict = "cluster.gateway.grpc.meshserve.gateway.v1.PredictionService.Predict"
    infer = "cluster.gateway.grpc.inference.GRPCInferenceService.ModelInfer"
    before = _grpc_counters(admin)
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        for amount in (1.0, 2.0, 3.0):
            request = gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00046", amount)])
            stub.Predict(request, timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Predict(
                gateway_pb2.PredictRequest(route="no-such-route", instances=[instance("acct-00046", 1.0)]),
                timeout=10,
            )
    triton_grpc.InferenceServerClient(address).infer("fraud", [infer_input(ROWS)])
    after = _grpc_counters(admin)

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    counts = {outcome: delta(f"{predict}.{outcome}") for outcome in ("total", "success", "failure", "5")}
    assert counts == {"total": 4, "success": 3, "failure": 1, "5": 1}, after  # 5: NOT_FOUND, by status code
    assert (delta(f"{infer}.total"), delta(f"{infer}.success")) == (1, 1)
    with urllib.request.urlopen(f"http://{metrics}/stats/prometheus", timeout=5) as reply:
        text = reply.read().decode()
    scraped = {}  # (metric, grpc_service, grpc_method) -> value, for the gateway cluster, as Prometheus sees it
    for name, labels, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if tags.get("envoy_cluster_name") == "gateway":
            scraped[(name, tags.get("grpc_service"), tags.get("grpc_method"))] = float(value)
    assert scraped[("envoy_cluster_grpc_success", "meshserve.gateway.v1.PredictionService", "Predict")] >= 3
    assert scraped[("envoy_cluster_grpc_failure", "meshserve.gateway.v1.PredictionService", "Predict")] >= 1
    assert scraped[("envoy_cluster_grpc_total", "inference.GRPCInferenceService", "ModelInfer")] >= 1


def test_the_metrics_listener_serves_prometheus_and_nothing_else_of_the_admin_api(edge):
    envoy, metrics = edge.envoy, edge.metrics
    for method, path in (("GET", "/stats"), ("POST", "/quitquitquit"), ("POST", "/healthcheck/fail")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(
                urllib.request.Request(f"http://{metrics}{path}", method=method), timeout=5
            )
        assert refused.value.code == 404
    assert not envoy.exited and _admin_ready(edge.admin)


def _slow_infer(address: str, **kwargs) -> tuple[float, int]:
    """(score, Triton's per-request timeout in µs) from the test-only `slow` model, which runs 1 s and echoes
    the timeout it was given: what the gateway had left of the call's deadline."""
    tensor = triton_grpc.InferInput("features", [1, ROWS.shape[1]], "FP32")
    tensor.set_data_from_numpy(ROWS[:1])
    result = triton_grpc.InferenceServerClient(address).infer("slow", [tensor], **kwargs)
    return float(result.as_numpy("score")[0, 0]), int(result.as_numpy("timeout_us")[0, 0])


def test_a_callers_deadline_reaches_the_gateway_through_envoy(edge):
    """The `slow` route's own timeout is 10 s: a 20 s grpc-timeout is what the gateway spends, and a call
    without one keeps the route's timeout (Envoy adds no deadline of its own)."""
    address = edge.address
    score, left_us = _slow_infer(address, client_timeout=20)
    # a little over 20 s can arrive: gRPC rounds the timeout it writes on the wire up
    assert score == 0.5 and 15e6 < left_us <= 20.2e6
    _, default_us = _slow_infer(address)
    assert 5e6 < default_us <= 10e6


async def test_envoy_does_not_retry_what_the_gateway_answered(edge):
    """`all-down-no-default`: every tier fails, the gateway retries within its budget and answers UNAVAILABLE;
    one attempt through Envoy, not three."""
    address, envoy = edge.address, edge.envoy
    request_id = f"edge-{os.getpid()}-noretry"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
                gateway_pb2.PredictRequest(
                    route="all-down-no-default", instances=[instance("acct-00047", 5.0)]
                ),
                metadata=(("x-request-id", request_id),),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    line = await _access_log_line(envoy, request_id)
    assert (line["grpc_status"], line["attempts"]) == ("Unavailable", 1)


async def _access_log_line(envoy: ChildProcess, request_id: str) -> dict:
    """Envoy's JSON access log line for a request id (written once the call completes; waited for, bounded)."""
    for _ in range(50):
        for text in envoy.log_path.read_text().splitlines():
            if request_id in text and text.startswith("{"):
                return json.loads(text)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no access log line for {request_id}:\n{envoy.log_tail(20)}")


class _OtlpGrpcForwarder(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP over gRPC, as Envoy exports by default (and to jaeger:4317 in compose), handed on to the test's
    OTLP/HTTP receiver, so every process's spans land in one place."""

    def __init__(self, receiver: OtlpReceiver) -> None:
        self.url = f"{receiver.endpoint}/v1/traces"

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/x-protobuf"})
        urllib.request.urlopen(request, timeout=5).close()

    async def Export(self, request, context):  # noqa: N802 - gRPC's method name
        await asyncio.to_thread(self._post, request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.asynccontextmanager
async def otlp_grpc_endpoint(receiver: OtlpReceiver) -> AsyncIterator[str]:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_OtlpGrpcForwarder(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop(1)


@pytest_asyncio.fixture(scope="module")
async def traced_edge(mesh, tmp_path_factory):
    """A gateway of its own that traces (OTLP/HTTP to a real receiver), in front of the session mesh's services,
    behind an Envoy that traces (OTLP/gRPC) to the same receiver and caps deadlines at 3 s: (address, receiver)."""
    run_dir = tmp_path_factory.mktemp("traced-edge")
    with OtlpReceiver() as receiver:
        port, http_port = free_ports(2)
        settings = {
            "HOST": "127.0.0.1", "PORT": port, "ADMIN_PORT": 0, "HTTP_PORT": http_port, "ROUTES_PATH": FIXTURES / "routes.yaml",
            "AUDIT_LOG": run_dir / "audit.jsonl", "FEATURE_URL": mesh.endpoints.feature,
            "CACHE_URL": mesh.endpoints.cache, "INFERENCE_URL": mesh.endpoints.inference,
        }  # fmt: skip
        env = {
            **os.environ,
            **{f"MESHSERVE_GATEWAY_{name}": str(value) for name, value in settings.items()},
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        gateway = ChildProcess("gateway", [sys.executable, "-m", "gateway"], env, run_dir / "gateway.log")
        await gateway.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await wait_until_serving(channel, timeout_s=STARTUP_TIMEOUT_S)
            async with (
                otlp_grpc_endpoint(receiver) as collector,
                running_envoy(
                    run_dir,
                    f"127.0.0.1:{port}",
                    f"127.0.0.1:{http_port}",
                    tracing_otlp_endpoint=collector,
                    max_grpc_timeout_s=3.0,
                ) as edge,
            ):
                yield edge.address, receiver
        finally:
            assert await gateway.stop(grace=5) == 0, gateway.log_tail(40)


async def test_envoys_span_joins_the_callers_trace_and_parents_the_gateways(traced_edge):
    address, receiver = traced_edge
    provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("client predict") as span:
        carrier: dict[str, str] = {}
        inject(carrier)
        async with grpc.aio.insecure_channel(address) as channel:
            await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
                gateway_pb2.PredictRequest(route="fraud-v2", instances=[instance("acct-00048", 7.0)]),
                metadata=tuple(carrier.items()),
                timeout=10,
            )
    trace_id = f"{span.get_span_context().trace_id:032x}"
    client_span_id = f"{span.get_span_context().span_id:016x}"
    deadline = time.monotonic() + 15
    while True:
        spans = receiver.trace(trace_id)
        envoy = [s for s in spans if s.service == "envoy"]
        gateway = [s for s in spans if s.service == "meshserve-gateway" and s.name.endswith("/Predict")]
        if envoy and gateway or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(envoy) == 1, spans
    assert envoy[0].parent_span_id == client_span_id
    assert gateway and gateway[0].parent_span_id == envoy[0].span_id, spans


async def test_a_rest_call_through_envoy_with_a_traceparent_is_one_trace(traced_edge):
    """REST, as over gRPC: the caller's traceparent reaches Envoy, whose span joins that trace and is the parent of
    the gateway's REST span (Envoy sends its own span id on in traceparent, the trace id unchanged). Needs the
    gateway's REST tracing (feat/rest); until that is merged, no gateway span arrives and this test fails."""
    address, receiver = traced_edge
    provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    with provider.get_tracer("test").start_as_current_span("client rest infer") as span:
        carrier: dict[str, str] = {}
        inject(carrier)
        status, _, body = await asyncio.to_thread(
            _rest, address, "POST", "/v2/models/fraud/infer", _rest_body(ROWS), {**JSON, **carrier}
        )
    assert status == 200, body
    trace_id = f"{span.get_span_context().trace_id:032x}"
    client_span_id = f"{span.get_span_context().span_id:016x}"
    assert carrier["traceparent"].split("-")[1:3] == [trace_id, client_span_id]
    deadline = time.monotonic() + 15
    while True:
        spans = receiver.trace(trace_id)
        envoy = [s for s in spans if s.service == "envoy"]
        gateway = [s for s in spans if s.service == "meshserve-gateway"]
        if envoy and gateway or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(envoy) == 1, spans
    assert envoy[0].parent_span_id == client_span_id
    # the gateway's outermost span for the request is Envoy's child; every other one is beneath it
    assert gateway and [s.parent_span_id for s in gateway].count(envoy[0].span_id) == 1, spans


def test_a_deadline_beyond_the_cap_is_cut_to_it_on_the_way_to_the_gateway(traced_edge):
    """This edge caps grpc-timeout at 3 s: a caller's 20 s reaches the gateway as 3 s (the gateway then stops
    when Envoy does), and the 1 s call still succeeds."""
    address, _ = traced_edge
    score, left_us = _slow_infer(address, client_timeout=20)
    assert score == 0.5 and 2e6 < left_us <= 3e6


async def test_a_call_longer_than_any_fixed_edge_timeout_succeeds_within_its_deadline(edge):
    """`slow-canary` answers after a 2 s injected delay: once cut by a fixed per-try timeout (and then retried),
    now one attempt that ends when the gateway answers."""
    address, envoy = edge.address, edge.envoy
    request_id = f"edge-{os.getpid()}-long"
    started = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
            gateway_pb2.PredictRequest(route="slow-canary", instances=[instance("acct-00049", 3.0)]),
            metadata=(("x-request-id", request_id),),
            timeout=10,
        )
    assert reply.variant == "canary" and time.monotonic() - started >= 2.0
    line = await _access_log_line(envoy, request_id)
    assert (line["grpc_status"], line["attempts"]) == ("OK", 1)
