"""Tracing for the REST frontend: one SERVER span per HTTP request, as the gRPC instrumentation makes one per call.

A small ASGI middleware of our own, because opentelemetry-instrumentation-asgi is not among our dependencies; it
does what that library's `OpenTelemetryMiddleware` does for us, and could replace it one for one. The caller's
W3C `traceparent` and `tracestate` headers are read with OpenTelemetry's configured propagator
(`opentelemetry.propagate.extract`), so a request joins its caller's trace (an edge proxy's, a client's); the span
is the current one while the request is handled, so the gRPC instrumentation carries the trace on through every
hop the request causes (inference service, Triton).

Cheap when not sampled: a caller's `traceparent` with the sampled flag off yields a non-recording span (the
ParentBased sampler), and then nothing else is done: no attributes, no wrapped `send`. The middleware is only
installed where the process configured tracing (`meshserve.core.telemetry`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, StatusCode

__all__ = ["UNTRACED_PATHS", "HttpTracing"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Probes ask these every few seconds and they cause no hop: spans for them would only bury the traces that matter
UNTRACED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class _AsgiHeaders(Getter[Iterable[tuple[bytes, bytes]]]):
    """Header values from an ASGI scope's `headers` (lower-case latin-1 bytes pairs), for the propagator."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_HEADERS = _AsgiHeaders()


class HttpTracing:
    """ASGI middleware around `app`: a SERVER span per HTTP request (paths in `untraced` excepted), a child of the
    caller's trace context when the request carries one. Named `<METHOD> <route template>` once the router has
    matched (e.g. `POST /v2/models/{model}/infer`), else `<METHOD>`, as OpenTelemetry's HTTP conventions say."""

    def __init__(
        self,
        app: App,
        tracer: trace.Tracer | None = None,
        untraced: frozenset[str] = UNTRACED_PATHS,
    ) -> None:
        self.app = app
        self.tracer = tracer or trace.get_tracer(__name__)
        self.untraced = untraced

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.untraced:
            await self.app(scope, receive, send)
            return
        parent = propagate.extract(scope["headers"], getter=_HEADERS)
        method = scope["method"]
        with self.tracer.start_as_current_span(method, context=parent, kind=SpanKind.SERVER) as span:
            if not span.is_recording():  # not sampled: the context still flows on (unsampled) downstream
                await self.app(scope, receive, send)
                return
            span.set_attributes(_request_attributes(scope))

            async def send_noting_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:  # a 4xx is the caller's error, not the server's (the conventions' rule)
                        span.set_status(StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, send_noting_status)
            finally:
                # the router notes the matched route in the scope (Starlette's `route`), known only now
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)


def _request_attributes(scope: Scope) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server, client = scope.get("server"), scope.get("client")
    if server:
        attributes["server.address"], attributes["server.port"] = server[0], server[1]
    if client:
        attributes["client.address"] = client[0]
    return attributes
