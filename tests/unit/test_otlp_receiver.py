"""The tests' OTLP/HTTP receiver takes bodies the way exporters send them: sized, or chunked (Envoy's)."""

from __future__ import annotations

import http.client

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.otlp_receiver import OtlpReceiver


def _request() -> bytes:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attribute = resource.resource.attributes.add(key="service.name")
    attribute.value.string_value = "envoy"
    span = resource.scope_spans.add().spans.add(name="ingress", trace_id=bytes(range(16)), span_id=bytes(8))
    span.parent_span_id = bytes(range(8))
    return request.SerializeToString()


@pytest.mark.parametrize("chunked", [False, True])
def test_receiver_reads_sized_and_chunked_bodies(chunked):
    body = _request()
    with OtlpReceiver() as receiver:
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        headers = {"Content-Type": "application/x-protobuf"}
        if chunked:  # two chunks, to check they are joined
            parts = iter([body[:7], body[7:]])
            connection.request("POST", "/v1/traces", body=parts, headers=headers, encode_chunked=True)
        else:
            connection.request("POST", "/v1/traces", body=body, headers=headers)
        assert connection.getresponse().status == 200
        connection.close()
        (span,) = receiver.trace(bytes(range(16)).hex())
    assert (span.service, span.name, span.parent_span_id) == ("envoy", "ingress", bytes(range(8)).hex())
