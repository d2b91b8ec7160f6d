"""A stand-in for the monitor service, in the test's process on a free port: it keeps what the gateway sends
(prediction records, labels) and lets a test wait for them, hang, or stop and come back on the same port. For the
gateway's side of the prediction log until tests run against the real `services.monitor`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from meshserve.feedback.v1 import feedback_pb2
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc


class FakeMonitor(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self) -> None:
        self.records: list[monitor_pb2.PredictionRecord] = []
        self.batches: list[int] = []  # records per LogPredictions call
        self.feedback: list[feedback_pb2.SendFeedbackRequest] = []
        self.metadata: list[dict[str, str]] = []  # each call's metadata
        self.hang = False  # LogPredictions never answers while set
        self._changed = asyncio.Condition()

    async def LogPredictions(self, request, context):
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        if self.hang:
            async with self._changed:
                self._changed.notify_all()
            await asyncio.Event().wait()
        self.records.extend(request.records)
        self.batches.append(len(request.records))
        async with self._changed:
            self._changed.notify_all()
        return monitor_pb2.LogPredictionsResponse(stored=len(request.records))

    async def SendFeedback(self, request, context):
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        self.feedback.append(request)
        refused = [feedback_pb2.Refused(index=n, prediction_id=label.prediction_id,
                                        reason=f"label {label.value:g} does not fit route fraud (binary: 0 or 1)")
                   for n, label in enumerate(request.labels) if label.value not in (0, 1)]  # fmt: skip
        return feedback_pb2.SendFeedbackResponse(accepted=len(request.labels) - len(refused), refused=refused)

    def by_id(self, shadow: bool = False) -> dict[str, monitor_pb2.PredictionRecord]:
        return {r.prediction_id: r for r in self.records if r.shadow == shadow}

    async def wait_for(self, done: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Until `done()` holds of what arrived (records are sent behind the answers)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(done), timeout_s)


@contextlib.asynccontextmanager
async def serving(monitor: FakeMonitor, port: int = 0) -> AsyncIterator[int]:
    """`monitor` on 127.0.0.1:`port` (0: a free one) until the block ends; yields the port."""
    server = grpc.aio.server()
    monitor_pb2_grpc.add_MonitorServiceServicer_to_server(monitor, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    assert bound, f"cannot listen on 127.0.0.1:{port}"
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(0)
