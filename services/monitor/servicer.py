"""gRPC adapters: MonitorService and meshserve.feedback.v1.FeedbackService, both over one MonitorHandler."""

from __future__ import annotations

from meshserve.core.telemetry import annotate
from meshserve.feedback.v1 import feedback_pb2_grpc
from meshserve.monitor.v1 import monitor_pb2_grpc
from services.monitor import convert
from services.monitor.handler import MonitorHandler


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, handler: MonitorHandler) -> None:
        self.handler = handler

    async def LogPredictions(self, request, context):
        self.handler.admit(len(request.records))  # before converting an oversized batch
        annotate(records=len(request.records))
        result = await self.handler.log_predictions(convert.records_from_pb(request))
        return convert.log_result_to_pb(result)

    async def SendFeedback(self, request, context):
        self.handler.admit(len(request.labels), "labels")
        annotate(labels=len(request.labels))
        result = await self.handler.send_feedback(convert.labels_from_pb(request), request.correct)
        return convert.feedback_to_pb(result)

    async def GetQuality(self, request, context):
        annotate(route=request.route)
        return convert.quality_to_pb(
            await self.handler.quality(request.route, request.window_s, request.since)
        )

    async def Compare(self, request, context):
        annotate(route=request.route)
        results = await self.handler.compare(
            request.route,
            request.baseline,
            request.canary,
            request.since,
            convert.criteria_from_pb(request),
            request.alpha,
            request.paired,
        )
        return convert.comparisons_to_pb(results)

    async def Export(self, request, context):
        annotate(route=request.route)
        async for chunk in self.handler.export(request.route, request.since, request.with_labels):
            yield convert.export_chunk_to_pb(chunk)


class FeedbackServicer(feedback_pb2_grpc.FeedbackServiceServicer):
    """The same labels as MonitorService/SendFeedback, under the public feedback contract."""

    def __init__(self, monitor: MonitorServicer) -> None:
        self.monitor = monitor

    async def SendFeedback(self, request, context):
        return await self.monitor.SendFeedback(request, context)
