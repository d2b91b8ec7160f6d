"""Protobuf in and out, in one place: meshserve.monitor.v1 and meshserve.feedback.v1 to the monitor's domain
types and back."""

from __future__ import annotations

import math

from meshserve.feedback.v1 import feedback_pb2
from meshserve.monitor.v1 import monitor_pb2
from meshserve.quality import BinaryQuality, Comparison
from services.monitor.evaluation import Criterion, VariantReport
from services.monitor.feedback import FeedbackResult
from services.monitor.handler import ExportChunk, LogResult, RouteQuality
from services.monitor.records import IncomingLabel, Record


def records_from_pb(request: monitor_pb2.LogPredictionsRequest) -> list[Record]:
    return [
        Record(
            r.prediction_id,
            r.route,
            r.variant,
            r.model,
            r.model_version,
            r.tier,
            r.time,
            r.score,
            r.shadow,
            r.task,
            r.threshold,
            dict(r.features) if r.features else None,
        )  # fmt: skip
        for r in request.records
    ]


def log_result_to_pb(result: LogResult) -> monitor_pb2.LogPredictionsResponse:
    return monitor_pb2.LogPredictionsResponse(stored=result.stored, duplicates=result.duplicates)


def labels_from_pb(request: feedback_pb2.SendFeedbackRequest) -> list[IncomingLabel]:
    return [IncomingLabel(x.prediction_id, x.value, x.event_time) for x in request.labels]


def feedback_to_pb(result: FeedbackResult) -> feedback_pb2.SendFeedbackResponse:
    return feedback_pb2.SendFeedbackResponse(
        accepted=result.accepted,
        duplicates=result.duplicates,
        corrected=result.corrected,
        pending=result.pending,
        refused=[
            feedback_pb2.Refused(index=x.index, prediction_id=x.prediction_id, reason=x.reason)
            for x in result.refused
        ],
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _binary_to_pb(q: BinaryQuality) -> monitor_pb2.BinaryQuality:
    out = monitor_pb2.BinaryQuality(
        threshold=q.threshold,
        precision=q.precision or 0.0,
        recall=q.recall or 0.0,
        f1=q.f1 or 0.0,
        predicted_positive_rate=q.predicted_positive_rate or 0.0,
        actual_positive_rate=q.actual_positive_rate or 0.0,
        expected_calibration_error=q.calibration.expected_calibration_error or 0.0,
        bins=[
            monitor_pb2.ReliabilityBin(
                lower=b.lower,
                upper=b.upper,
                count=b.count,
                mean_score=_or_nan(b.mean_score),
                positive_fraction=_or_nan(b.positive_fraction),
            )
            for b in q.calibration.bins
        ],
    )
    for name in ("auc", "log_loss", "brier"):  # optional: absent where undefined
        if (value := getattr(q, name)) is not None:
            setattr(out, name, value)
    return out


def _variant_to_pb(v: VariantReport) -> monitor_pb2.VariantQuality:
    out = monitor_pb2.VariantQuality(
        variant=v.variant,
        model=v.model,
        model_version=v.model_version,
        shadow=v.shadow,
        predictions=v.labels.predictions,
        labelled=v.labels.labelled,
        label_coverage=v.labels.coverage or 0.0,
        label_delay_p50_s=_or_nan(v.labels.delay_p50_s),
        label_delay_p90_s=_or_nan(v.labels.delay_p90_s),
        task=int(v.task),
    )
    if v.binary is not None:
        out.binary.CopyFrom(_binary_to_pb(v.binary))
    if v.regression is not None:
        out.regression.CopyFrom(
            monitor_pb2.RegressionQuality(mae=_or_nan(v.regression.mae), rmse=_or_nan(v.regression.rmse))
        )
    return out


def quality_to_pb(q: RouteQuality) -> monitor_pb2.GetQualityResponse:
    return monitor_pb2.GetQualityResponse(
        route=q.route,
        variants=[_variant_to_pb(v) for v in q.variants],
        feedback=monitor_pb2.FeedbackCounts(**q.feedback),
    )


def criteria_from_pb(request: monitor_pb2.CompareRequest) -> list[Criterion]:
    return [Criterion(c.metric, c.limit) for c in request.criteria]


def comparisons_to_pb(results: list[tuple[Criterion, Comparison]]) -> monitor_pb2.CompareResponse:
    return monitor_pb2.CompareResponse(
        comparisons=[
            monitor_pb2.Comparison(
                metric=criterion.metric,
                verdict=c.verdict,
                estimate=c.estimate,
                lower=c.lower,
                upper=c.upper,
                e_value=c.statistic,
                limit=c.limit,
                canary_value=c.canary,
                baseline_value=c.baseline,
                canary_labels=c.canary_samples,
                baseline_labels=c.baseline_samples,
            )
            for criterion, c in results
        ]
    )


def export_chunk_to_pb(chunk: ExportChunk) -> monitor_pb2.ExportChunk:
    rows = []
    for r in chunk.rows:
        row = monitor_pb2.ExportRow(
            prediction_id=r.prediction_id,
            variant=r.variant,
            model_version=r.model_version,
            time=r.time,
            score=r.score,
            features=r.features,
            shadow=r.shadow,
        )
        if r.label is not None:
            row.label = r.label
        rows.append(row)
    return monitor_pb2.ExportChunk(rows=rows, feature_names=chunk.feature_names)
