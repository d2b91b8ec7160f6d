"""What every RPC a meshserve server handles goes through, assembled in one place and in a fixed order: the
caller's metadata read once (request id, headers), metrics and the access log, the call guard (who may call:
peer check, caller authentication; before the request is even decoded), then one clean status for any failure.

These are interceptors applied when handlers are registered, not grpc.aio ServerInterceptors: each method's
handler is wrapped once, so a call pays for a coroutine of ours and nothing else (a grpc.aio interceptor runs an
extra coroutine and builds a new handler on every call).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from meshserve.core.auth import Principal
from meshserve.core.context import REQUEST_ID_HEADER, adopt_call, set_principal
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError
from meshserve.core.metrics import ServiceMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger("meshserve.access")

# A call guard: runs where each call is adopted, before the handler; raises Unauthenticated / PermissionDenied
# (answered with its status like any MeshError), or returns the caller's Principal (the call's from then on).
Guard = Callable[[grpc.aio.ServicerContext, str], "Principal | None | Awaitable[Principal | None]"]

STATUS_FOR: dict[ErrorCode, grpc.StatusCode] = {code: grpc.StatusCode[code.name] for code in ErrorCode}
# Downstream codes that keep their meaning for our caller; anything else becomes INTERNAL.
_PASSED_THROUGH = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNIMPLEMENTED,
}


def _outcome(exc: BaseException | None, context: grpc.aio.ServicerContext) -> str:
    """The status code name a call ends with."""
    if exc is None:
        return "OK"
    if isinstance(exc, MeshError):
        return STATUS_FOR[exc.code].name
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name if exc.code() in _PASSED_THROUGH else "INTERNAL"
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code() if isinstance(exc, grpc.aio.AbortError) else None
    return code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"


class _Recorder:
    """One method's metrics, with the label lookups done once rather than on every call."""

    def __init__(self, method: str, metrics: ServiceMetrics | None) -> None:
        self.method = method
        self.metrics = metrics
        self.in_flight = metrics.in_flight.labels(method) if metrics else None
        self.latency = metrics.latency.labels(method) if metrics else None
        self._counts: dict[str, object] = {}

    def begin(self, context: grpc.aio.ServicerContext) -> float:
        adopt_call(context.invocation_metadata())
        if self.in_flight is not None:
            self.in_flight.inc()
        return time.perf_counter()

    def end(self, context: grpc.aio.ServicerContext, started: float, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - started
        outcome = _outcome(exc, context)
        if self.metrics is not None:
            self.in_flight.inc(-1)  # type: ignore[union-attr]
            self.latency.observe(seconds)  # type: ignore[union-attr]
            counter = self._counts.get(outcome)
            if counter is None:
                counter = self._counts[outcome] = self.metrics.requests.labels(self.method, outcome)
            counter.inc()  # type: ignore[attr-defined]
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "rpc", extra={"method": self.method, "outcome": outcome, "ms": round(seconds * 1000, 3)}
            )


def _decoder(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """`deserialize` raising InvalidArgument (naming the message type) for bytes that are not such a message:
    gRPC itself would answer UNKNOWN with a Python exception's text, before any of our code could run."""
    if deserialize is None:
        return None
    message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = message.full_name if message is not None else "request message"

    def decode(data: bytes) -> object:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - DecodeError, invalid UTF-8 in a string field, ...
            raise InvalidArgument(
                f"the request is not a valid {name} ({len(data)} bytes that do not parse as one)"
            ) from None

    return decode


async def _admit(guard: Guard, context: grpc.aio.ServicerContext, method: str) -> None:
    outcome = guard(context, method)
    if inspect.isawaitable(outcome):
        outcome = await outcome
    if isinstance(outcome, Principal):
        set_principal(outcome)


def wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, metrics: ServiceMetrics | None, guard: Guard | None = None
) -> grpc.RpcMethodHandler:
    """`handler` adopting the caller's metadata, passing its guard, decoding its request (a bad one is
    INVALID_ARGUMENT), recording the call and mapping any exception to one clean status, for any RPC shape."""
    record = _Recorder(method, metrics)
    decode = _decoder(handler.request_deserializer)

    async def decoded(requests):
        async for data in requests:
            yield decode(data)  # type: ignore[misc]

    def arguments(request):
        if decode is None:
            return request
        return decoded(request) if handler.request_streaming else decode(request)

    def unary(inner):
        async def call(request, context):
            started = record.begin(context)
            try:
                if guard is not None:
                    await _admit(guard, context, method)
                reply = await inner(arguments(request), context)
            except BaseException as exc:  # every failure gets exactly one clean status
                record.end(context, started, exc)
                await _abort(context, exc, method)
                raise  # _abort always raises; this keeps type checkers honest
            record.end(context, started, None)
            return reply

        return call

    def streaming(inner):
        if inspect.isasyncgenfunction(inner):

            async def gen(request, context):
                started = record.begin(context)
                try:
                    if guard is not None:
                        await _admit(guard, context, method)
                    async for item in inner(arguments(request), context):
                        yield item
                except BaseException as exc:
                    record.end(context, started, exc)
                    await _abort(context, exc, method)
                    raise
                record.end(context, started, None)

            return gen
        return unary(inner)  # a coroutine that writes with context.write

    kinds = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, unary),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, streaming),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, unary),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, streaming),
    }
    for attr, (make, decorate) in kinds.items():
        inner = getattr(handler, attr)
        if inner is not None:
            return make(
                decorate(inner), request_deserializer=None, response_serializer=handler.response_serializer
            )
    return handler


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
        raise exc  # cancellation, or an abort the handler already made
    if isinstance(exc, MeshError):
        if exc.metadata:
            context.set_trailing_metadata(exc.metadata)
        await context.abort(STATUS_FOR[exc.code], exc.message)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _PASSED_THROUGH:
        await context.abort(exc.code(), exc.details() or exc.code().name)
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose answers are wrapped, once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[[grpc.RpcMethodHandler, str], object]):
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        if method not in self._wrapped:
            handler = self._inner.service(handler_call_details)
            self._wrapped[method] = None if handler is None else self._wrap(handler, method)
        return self._wrapped[method]


class HandlerRegistry:
    """What servicers register on instead of the server itself: it wraps every handler on its way in. It offers
    the two registration methods generated `add_*_to_server` functions, health and reflection use."""

    def __init__(
        self, server: grpc.aio.Server, metrics: ServiceMetrics | None = None, guard: Guard | None = None
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.guard = guard  # every call passes it first (GrpcService.guard())

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return wrap_handler(handler, method, self.metrics, self.guard)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self._wrap) for h in handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.server.add_registered_method_handlers(
            service_name,
            {name: self._wrap(h, f"/{service_name}/{name}") for name, h in method_handlers.items()},
        )

    def add_service(
        self,
        service: ServiceDescriptor,
        servicer: object,
        raw: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> None:
        """Register `servicer`'s methods as pre-registered handlers built from the service's descriptor (for
        generated code that offers only generic handlers, whose lookup runs on every call). Methods named in
        `raw` take and return serialised bytes: a forwarder that never looks inside the message. `only`: just
        these methods of the service."""
        handlers = {}
        passthrough = set(raw)
        chosen = None if only is None else set(only)
        for method in service.methods:
            if chosen is not None and method.name not in chosen:
                continue
            kind = _KINDS[method.client_streaming, method.server_streaming]
            as_bytes = method.name in passthrough
            handlers[method.name] = kind(
                getattr(servicer, method.name),
                request_deserializer=None if as_bytes else GetMessageClass(method.input_type).FromString,
                response_serializer=None
                if as_bytes
                else GetMessageClass(method.output_type).SerializeToString,
            )
        self.add_registered_method_handlers(service.full_name, handlers)


_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


__all__ = ["REQUEST_ID_HEADER", "STATUS_FOR", "Guard", "HandlerRegistry", "wrap_handler"]
