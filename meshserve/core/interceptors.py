"""Server interceptors, assembled in one place and in a fixed order: request id, then error mapping."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import grpc

from meshserve.core.context import REQUEST_ID_HEADER, set_request_id
from meshserve.core.errors import ErrorCode, MeshError
from meshserve.core.metrics import ServiceMetrics
from meshserve.core.telemetry import annotate

log = logging.getLogger(__name__)
access_log = logging.getLogger("meshserve.access")

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


def _wrap(handler: grpc.RpcMethodHandler, method: str, metrics: ServiceMetrics | None):
    """Return `handler` adopting the request id, mapping exceptions to one clean status, and recording the call
    (metrics, DEBUG access log), for any RPC shape."""

    def begin(context) -> float:
        _adopt_request_id(context)
        if metrics is not None:
            metrics.in_flight.labels(method).inc()
        return time.perf_counter()

    def end(context, started: float, exc: BaseException | None) -> None:
        seconds = time.perf_counter() - started
        outcome = _outcome(exc, context)
        if metrics is not None:
            metrics.in_flight.labels(method).dec()
            metrics.observe(method, outcome, seconds)
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug(
                "rpc", extra={"method": method, "outcome": outcome, "ms": round(seconds * 1000, 3)}
            )

    def unary(inner):
        async def call(request, context):
            started = begin(context)
            try:
                reply = await inner(request, context)
            except BaseException as exc:  # every failure gets exactly one clean status
                end(context, started, exc)
                await _abort(context, exc, method)
                raise  # _abort always raises; this keeps type checkers honest
            end(context, started, None)
            return reply

        return call

    def streaming(inner):
        if inspect.isasyncgenfunction(inner):

            async def gen(request, context):
                started = begin(context)
                try:
                    async for item in inner(request, context):
                        yield item
                except BaseException as exc:
                    end(context, started, exc)
                    await _abort(context, exc, method)
                    raise
                end(context, started, None)

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
                decorate(inner),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if not isinstance(exc, Exception) or isinstance(exc, grpc.aio.AbortError):
        raise exc  # cancellation, or an abort the handler already made
    if isinstance(exc, MeshError):
        await context.abort(STATUS_FOR[exc.code], exc.message)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _PASSED_THROUGH:
        await context.abort(exc.code(), exc.details() or exc.code().name)
    log.error("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _adopt_request_id(context: grpc.aio.ServicerContext) -> None:
    metadata = dict(context.invocation_metadata() or ())
    annotate(request_id=set_request_id(metadata.get(REQUEST_ID_HEADER)))


class ServerCallInterceptor(grpc.aio.ServerInterceptor):
    """Adopts the caller's request id (or mints one) and maps any exception to one clean status.

    Both run inside the handler's own task, where the request-id context variable must be set.
    """

    def __init__(self, metrics: ServiceMetrics | None = None) -> None:
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, handler_call_details.method, self.metrics)


def server_interceptors(metrics: ServiceMetrics | None = None) -> list[grpc.aio.ServerInterceptor]:
    return [ServerCallInterceptor(metrics)]
