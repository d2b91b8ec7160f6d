"""The REST frontend's tracing middleware, driven as ASGI on a fake InferenceApi with an in-memory exporter: a
server span per request that joins the caller's W3C trace context (tracestate too) and is current while the
request is handled (so the gRPC hops it causes join it too); an unsampled caller costs no span."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.api.http_tracing import HttpTracing
from meshserve.core.errors import Unavailable
from tests.unit.test_http_routes import FakeApi, call, infer_body, rest_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class SeeingApi(FakeApi):
    """Notes the span that is current when the inference call is made (the one a gRPC client call would carry
    on)."""

    async def model_infer(self, request, time_left_s, headers):
        self.span_context = trace.get_current_span().get_span_context()
        return await super().model_infer(request, time_left_s, headers)


@pytest.fixture
def traced():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


async def infer(tracer, api, headers: dict[str, str]):
    rest = rest_for(api)
    body, length_header = infer_body()
    return await call(rest, "POST", "/v2/models/fraud/infer", body, {**headers, **length_header},
                      app=HttpTracing(rest.app(), tracer))  # fmt: skip


async def test_a_request_with_a_traceparent_joins_the_callers_trace_with_its_tracestate(traced):
    tracer, exporter = traced
    api = SeeingApi()
    reply = await infer(
        tracer, api, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "edge=envoy,k=v"}
    )
    assert reply.status == 200
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert span.name == "POST /v2/models/{model}/infer"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID and span.parent.is_remote
    assert dict(span.context.trace_state) == {"edge": "envoy", "k": "v"}
    assert span.attributes["http.route"] == "/v2/models/{model}/infer"
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["url.path"] == "/v2/models/fraud/infer"
    assert span.attributes["http.response.status_code"] == 200
    assert span.status.status_code is StatusCode.UNSET
    # the inference call ran inside the server span: the next hop's span is its child
    assert api.span_context.span_id == span.context.span_id


async def test_a_request_without_trace_context_starts_a_trace_of_its_own(traced):
    tracer, exporter = traced
    api = SeeingApi()
    await infer(tracer, api, {})
    [span] = exporter.get_finished_spans()
    assert span.parent is None and format(span.context.trace_id, "032x") != TRACE_ID
    assert api.span_context.trace_id == span.context.trace_id


async def test_an_unsampled_caller_gets_no_span_and_its_hops_stay_unsampled(traced):
    tracer, exporter = traced
    api = SeeingApi()
    reply = await infer(tracer, api, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"})
    assert reply.status == 200
    assert exporter.get_finished_spans() == ()
    assert format(api.span_context.trace_id, "032x") == TRACE_ID  # the caller's trace, passed on unsampled
    assert not api.span_context.trace_flags.sampled


async def test_server_errors_mark_the_span_and_caller_errors_do_not(traced):
    tracer, exporter = traced
    await infer(tracer, FakeApi(Unavailable("Triton is down")), {})
    rest = rest_for(FakeApi())
    await call(rest, "POST", "/v2/models/fraud/infer", b"{not json", app=HttpTracing(rest.app(), tracer))
    unavailable, bad = exporter.get_finished_spans()
    assert (unavailable.attributes["http.response.status_code"], unavailable.status.status_code) == (
        503,
        StatusCode.ERROR,
    )
    assert (bad.attributes["http.response.status_code"], bad.status.status_code) == (400, StatusCode.UNSET)


async def test_health_probes_are_not_traced_and_unknown_paths_are_named_by_method(traced):
    tracer, exporter = traced
    rest = rest_for(FakeApi())
    app = HttpTracing(rest.app(), tracer)
    assert (await call(rest, "GET", "/v2/health/ready", app=app)).status == 200
    assert (await call(rest, "GET", "/v2/health/live", app=app)).status == 200
    assert (await call(rest, "GET", "/no/such/thing", app=app)).status == 404
    [span] = exporter.get_finished_spans()
    assert (span.name, span.attributes["http.response.status_code"]) == ("GET", 404)
    assert "http.route" not in span.attributes
