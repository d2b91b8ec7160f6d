"""OpenTelemetry tracing for every process, configured only by the standard OTEL_* variables.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), so a
laptop run exports nothing. When on, the maintained gRPC instrumentation traces every server and client call and
carries W3C trace context across hops, Triton included (it joins the trace from the `traceparent` header).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import trace

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# How long a stopping process waits for its last spans to go out: the exporter retries an absent collector for
# its whole timeout (10 s by default) otherwise, and every stop of the mesh would wait that out
SHUTDOWN_TIMEOUT_S = 1.0
ABORT_WAIT_S = 0.5  # after an abort, for the export in progress to return
log = logging.getLogger(__name__)
_configured = False
_exporter = None  # the span exporter installed, which shutdown_tracing aborts when the collector is slow


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    return any(env.get(var) for var in ENDPOINT_VARS) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


def tracing_configured() -> bool:
    """Whether this process installed tracing (`configure_tracing` ran with an endpoint set): what a transport
    without a maintained instrumentation (the gateway's REST frontend) asks before adding its own spans."""
    return _configured


def _new_exporter(env: Mapping[str, str]):
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    )
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()  # endpoint, headers, timeout: from the OTEL_* variables


def configure_tracing(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install a tracer provider and the gRPC instrumentation before any server or channel exists.
    Returns whether tracing is on."""
    global _configured, _exporter
    if _configured or not tracing_enabled(env):
        return _configured
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {"service.name": env.get("OTEL_SERVICE_NAME") or f"meshserve-{service}"}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    exporter = _exporter = _new_exporter(env)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    _configured = True
    return True


def shutdown_tracing(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
    """Flush the spans still queued (on a clean exit), for at most about `timeout_s`: past it, the export in
    progress is aborted (the exporter's own shutdown ends its retries and closes its channel) and those spans are
    dropped, so an absent or slow collector never holds a stop. Whether everything was flushed in time."""
    provider = trace.get_tracer_provider()
    if not hasattr(provider, "shutdown"):
        return True
    done = threading.Event()

    def flush() -> None:
        try:
            provider.shutdown()
        finally:
            done.set()

    # a daemon thread: the SDK's shutdown takes no timeout, and one that overran must not keep the process alive
    threading.Thread(target=flush, name="tracing-shutdown", daemon=True).start()
    if done.wait(timeout_s):
        return True
    log.warning("trace collector too slow at shutdown; dropping unsent spans", extra={"timeout_s": timeout_s})
    if _exporter is not None:
        _exporter.shutdown()
    done.wait(ABORT_WAIT_S)
    return False


def recording() -> bool:
    """Whether the current span records attributes (tracing is on and this call is sampled)."""
    return trace.get_current_span().is_recording()


def annotate(**attributes: str | int | float | bool) -> None:
    """Add meshserve attributes (route, variant, model version, cache hit, tier, request id) to the current span."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"meshserve.{key}": value for key, value in attributes.items()})
