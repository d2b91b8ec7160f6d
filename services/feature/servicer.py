"""gRPC adapter for FeatureService: protobuf in, FeatureHandler, protobuf out."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from meshserve.core.telemetry import annotate
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from services.feature.handler import FeatureHandler, FeatureValue, Status
from services.feature.ingest import IncomingRow


def _to_value(value: FeatureValue) -> feature_pb2.Value:
    if value.value is None:
        return feature_pb2.Value()
    if isinstance(value.value, int):
        return feature_pb2.Value(int64_value=value.value)
    return feature_pb2.Value(double_value=value.value)


def _to_timestamp(seconds: float | None) -> Timestamp:
    stamp = Timestamp()
    if seconds is not None:
        stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


class FeatureServicer(feature_pb2_grpc.FeatureServiceServicer):
    def __init__(self, handler: FeatureHandler) -> None:
        self.handler = handler

    async def GetOnlineFeatures(self, request, context):
        annotate(entity=request.entity, keys=len(request.entity_keys))
        result = await self.handler.get_online_features(
            request.entity, list(request.entity_keys), list(request.features)
        )
        return feature_pb2.GetOnlineFeaturesResponse(
            feature_names=result.feature_names,
            vectors=[
                feature_pb2.FeatureVector(
                    entity_key=key,
                    values=[_to_value(v) for v in values],
                    statuses=[v.status.value for v in values],
                    event_timestamps=[_to_timestamp(v.event_ts) for v in values],
                )
                for key, values in result.rows
            ],
        )

    async def PushFeatures(self, request_iterator, context):
        batches = rows = values = 0
        async for batch in request_iterator:
            incoming = [_incoming(row) for row in batch.rows]
            values += await self.handler.push(batch.entity, incoming)
            batches += 1
            rows += len(incoming)
        return feature_pb2.PushFeaturesResponse(batches=batches, rows=rows, values=values)

    async def GetFreshness(self, request, context):
        return feature_pb2.GetFreshnessResponse(
            features=[
                feature_pb2.FeatureFreshness(
                    feature=name,
                    present=counts[Status.PRESENT],
                    not_found=counts[Status.NOT_FOUND],
                    outside_max_age=counts[Status.OUTSIDE_MAX_AGE],
                )
                for name, counts in sorted(self.handler.served.items())
            ]
        )


def _incoming(row: feature_pb2.FeatureRow) -> IncomingRow:
    values = {}
    for name, value in row.values.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind) if kind else ""
    event_ts = row.event_time.ToNanoseconds() / 1e9 if row.HasField("event_time") else None
    return IncomingRow(int(row.line), row.entity_key, values, event_ts)
