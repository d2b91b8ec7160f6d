"""One trace across every hop, Triton included, exported over real OTLP to a receiver the test runs."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.mesh import REPO_ROOT, LocalMesh, MeshSettings
from tests.otlp_receiver import OtlpReceiver

SERVICES = {
    "test-client",
    "meshserve-gateway",
    "meshserve-cache",
    "meshserve-feature",
    "meshserve-inference",
    "triton",
}


@pytest.fixture(scope="module")
async def traced(tmp_path_factory):
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        mesh = LocalMesh(
            MeshSettings(
                gateway_port=0, admin_port=0, gateway_http_port=0, run_dir=tmp_path_factory.mktemp("traced"), extra_env=env,
                model_repositories=[REPO_ROOT / "model_repository"],
            )
        )  # fmt: skip
        await mesh.start()
        try:
            yield mesh, receiver
        finally:
            await mesh.stop()


async def test_one_connected_trace_spans_client_gateway_cache_feature_inference_and_triton(traced):
    mesh, receiver = traced
    provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
    )
    tracer = provider.get_tracer("test")

    async def traced_predict(attempt: int) -> str:
        request = gateway_pb2.PredictRequest(
            route="fraud",
            instances=[
                gateway_pb2.Instance(
                    entity_key="acct-00077",
                    features={
                        "amount": feature_pb2.Value(double_value=4321.0 + attempt),  # a cache miss every time
                        "merchant_category": feature_pb2.Value(int64_value=6),
                    },
                )
            ],
        )
        async with grpc.aio.insecure_channel(mesh.endpoints.gateway) as channel:
            with tracer.start_as_current_span("client predict") as span:
                carrier: dict[str, str] = {}
                inject(carrier)
                metadata = (*carrier.items(), ("x-request-id", "trace-test-1"))
                reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
                    request, metadata=metadata, timeout=10
                )
        assert not reply.predictions[0].from_cache
        return format(span.get_span_context().trace_id, "032x")

    async def complete(trace_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while {s.service for s in receiver.trace(trace_id)} != SERVICES:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True

    # Triton's exporter sends each batch once, without retry: on a loaded machine one can be lost, so a trace
    # gets up to three chances; the one checked below must be whole.
    for attempt in range(3):
        trace_id = await traced_predict(attempt)
        if await complete(trace_id, 10):
            break
    else:
        pytest.fail(
            f"no complete trace; last: {[(s.service, s.name) for s in receiver.trace(trace_id)]}; Triton spans "
            f"of any trace: {[(s.name, s.trace_id[:8]) for s in receiver.spans if s.service == 'triton']}"
        )
    await asyncio.sleep(0.5)  # stragglers of the same trace (e.g. the cache Set after the answer)
    provider.shutdown()
    spans = receiver.trace(trace_id)

    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert [r.service for r in roots] == ["test-client"], roots
    orphans = [s for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    assert not orphans, f"spans whose parent is not in the trace: {orphans}"

    gateway = next(s for s in spans if s.service == "meshserve-gateway" and s.name.endswith("/Predict"))
    assert gateway.attributes["meshserve.route"] == "fraud"
    assert gateway.attributes["meshserve.variant"] == "stable"
    assert gateway.attributes["meshserve.model_version"] == "1"
    assert gateway.attributes["meshserve.cache_hit"] is False
    assert gateway.attributes["meshserve.tier"] == "primary"
    assert gateway.attributes["meshserve.request_id"] == "trace-test-1"
    for service in ("meshserve-cache", "meshserve-feature", "meshserve-inference"):
        server = [s for s in spans if s.service == service]
        assert any(s.attributes.get("meshserve.request_id") == "trace-test-1" for s in server), service
    triton = [s for s in spans if s.service == "triton"]
    assert triton, "no Triton span joined the trace"


REST_SERVICES = {"test-client", "meshserve-gateway", "meshserve-inference", "triton"}


async def _complete(receiver: OtlpReceiver, trace_id: str, services: set[str], seconds: float) -> bool:
    """Whether spans of every one of `services` arrived for `trace_id` within `seconds`."""
    deadline = time.monotonic() + seconds
    while {s.service for s in receiver.trace(trace_id)} != services:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _rest_infer(address: str, headers: dict[str, str], amount: float) -> tuple[int, dict]:
    """One JSON infer request on route fraud over the gateway's REST port, as curl would send it."""
    row = [amount, 3.0, 80.0, 2.0, 400.0]
    body = json.dumps({"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": row}]})
    request = urllib.request.Request(
        f"http://{address}/v2/models/fraud/infer",
        body.encode(),
        {"content-type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.status, json.loads(reply.read())


async def test_a_rest_request_joins_the_callers_trace_through_gateway_inference_and_triton(traced):
    """The REST frontend traced like gRPC: the caller's traceparent and tracestate are joined, and the trace goes
    on through every hop; a caller that does not sample gets no span anywhere in the mesh."""
    mesh, receiver = traced
    provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces"))
    )
    tracer = provider.get_tracer("test")
    address = mesh.endpoints.gateway_http

    unsampled = "0af7651916cd43dd8448eb211c80319c"
    status, _ = await asyncio.to_thread(
        _rest_infer, address, {"traceparent": f"00-{unsampled}-b7ad6b7169203331-00"}, 17.0
    )
    assert status == 200

    async def traced_infer(attempt: int) -> str:
        with tracer.start_as_current_span("client rest infer") as span:
            carrier: dict[str, str] = {}
            inject(carrier)
            headers = {**carrier, "tracestate": "edge=test", "x-request-id": "trace-test-rest"}
            status, reply = await asyncio.to_thread(_rest_infer, address, headers, 5321.0 + attempt)
        assert status == 200 and reply["model_name"] == "fraud"
        return format(span.get_span_context().trace_id, "032x")

    for attempt in range(3):  # as above: Triton's exporter may lose a batch on a loaded machine
        trace_id = await traced_infer(attempt)
        if await _complete(receiver, trace_id, REST_SERVICES, 10):
            break
    else:
        pytest.fail(
            f"no complete REST trace; last: {[(s.service, s.name) for s in receiver.trace(trace_id)]}"
        )
    await asyncio.sleep(0.5)
    provider.shutdown()
    spans = receiver.trace(trace_id)

    ids = {s.span_id for s in spans}
    assert [r.service for r in spans if not r.parent_span_id] == ["test-client"]
    assert not [s for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    client = next(s for s in spans if s.service == "test-client")
    gateway = next(s for s in spans if s.service == "meshserve-gateway" and s.name.startswith("POST "))
    assert gateway.name == "POST /v2/models/{model}/infer"
    assert gateway.parent_span_id == client.span_id
    assert gateway.attributes["http.route"] == "/v2/models/{model}/infer"
    assert gateway.attributes["http.response.status_code"] == 200
    assert gateway.attributes["meshserve.route"] == "fraud"
    assert gateway.attributes["meshserve.variant"] == "stable"
    assert gateway.attributes["meshserve.tier"] == "primary"
    assert gateway.attributes["meshserve.request_id"] == "trace-test-rest"
    assert gateway.trace_state == "edge=test"
    inference = [s for s in spans if s.service == "meshserve-inference"]
    assert inference and all(s.trace_state == "edge=test" for s in inference)
    assert any(s.attributes.get("meshserve.request_id") == "trace-test-rest" for s in inference)

    # the unsampled request went first: had any of our processes recorded it, it would have been exported by now
    assert not [s for s in receiver.trace(unsampled) if s.service.startswith("meshserve-")]
