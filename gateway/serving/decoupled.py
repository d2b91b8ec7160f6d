"""Requests for decoupled models on a caller's ModelStreamInfer (several responses per request, or none; only
Triton knows when a request is done): relayed on one stream of their own through the inference service to
Triton, opened at the first such request and half-closed when the caller's stream ends, so Triton finishes every
request before the relay ends. Each response comes back under the name the caller used."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from tritonclient.grpc import service_pb2

from meshserve.core.errors import MeshError

__all__ = ["DecoupledRelay", "Deliver"]

OpenStream = Callable[
    [AsyncIterator[service_pb2.ModelInferRequest], float | None],
    AsyncIterator[service_pb2.ModelStreamInferResponse],
]
Deliver = Callable[[service_pb2.ModelStreamInferResponse], Awaitable[None]]


class DecoupledRelay:
    def __init__(self, open_stream: OpenStream, deliver: Deliver, time_left_s: float | None) -> None:
        self._open_stream = open_stream
        self._deliver = deliver
        self._time_left_s = time_left_s
        self._outgoing: asyncio.Queue[service_pb2.ModelInferRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._names: dict[str, str] = {}  # model -> the name the caller asked for it by

    def send(self, request: service_pb2.ModelInferRequest, model: str, version: str) -> None:
        """On the relay (opened now if it is not): `request`, addressed to Triton's `model` and `version`."""
        self._names[model] = request.model_name
        request.model_name, request.model_version = model, version
        if self._outgoing is None:
            self._outgoing = asyncio.Queue()
            self._reader = asyncio.create_task(self._relay(self._outgoing))
        self._outgoing.put_nowait(request)

    async def close(self) -> None:
        """No more requests: wait until Triton has sent every response of those sent."""
        if self._outgoing is not None and self._reader is not None:
            self._outgoing.put_nowait(None)
            await self._reader

    def cancel(self) -> None:
        if self._reader is not None:
            self._reader.cancel()

    async def _relay(self, outgoing: asyncio.Queue[service_pb2.ModelInferRequest | None]) -> None:
        async def requests() -> AsyncIterator[service_pb2.ModelInferRequest]:
            while (request := await outgoing.get()) is not None:
                yield request

        try:
            async for reply in self._open_stream(requests(), self._time_left_s):
                answer = reply.infer_response
                answer.model_name = self._names.get(answer.model_name, answer.model_name)
                await self._deliver(reply)
        except MeshError as exc:  # the stream broke: said once, in-band; the next request opens a new one
            await self._deliver(service_pb2.ModelStreamInferResponse(error_message=exc.message))
            if self._outgoing is outgoing:
                self._outgoing = None
