"""Server interceptors, assembled in one place and in a fixed order: request id, then error mapping."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from meshserve.core.context import REQUEST_ID_HEADER, set_request_id
from meshserve.core.errors import ErrorCode, MeshError
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

Around = Callable[[Any, grpc.aio.ServicerContext, Callable[[], Any]], Any]


def _wrap(handler: grpc.RpcMethodHandler, before: Callable[[grpc.aio.ServicerContext], None], method: str):
    """Return `handler` with `before(context)` run first and exceptions mapped to a status, for any RPC shape."""

    def unary(inner):
        async def call(request, context):
            before(context)
            started = time.perf_counter()
            try:
                reply = await inner(request, context)
            except Exception as exc:  # noqa: BLE001 - every failure gets exactly one clean status
                _access_log(method, started, exc)
                await _abort(context, exc, method)
            _access_log(method, started, None)
            return reply

        return call

    def streaming(inner):
        if inspect.isasyncgenfunction(inner):

            async def gen(request, context):
                before(context)
                try:
                    async for item in inner(request, context):
                        yield item
                except Exception as exc:  # noqa: BLE001
                    await _abort(context, exc, method)

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


def _access_log(method: str, started: float, exc: BaseException | None) -> None:
    """One DEBUG line per call, carrying the request id; free when DEBUG is off."""
    if access_log.isEnabledFor(logging.DEBUG):
        if exc is None:
            outcome = "OK"
        elif isinstance(exc, MeshError):
            outcome = exc.code.name
        elif isinstance(exc, grpc.aio.AioRpcError):
            outcome = exc.code().name
        else:
            outcome = type(exc).__name__
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        access_log.debug("rpc", extra={"method": method, "outcome": outcome, "ms": elapsed_ms})


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError):
        raise exc
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

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, _adopt_request_id, handler_call_details.method)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    return [ServerCallInterceptor()]
