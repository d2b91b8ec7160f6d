from meshserve.feedback.v1 import feedback_pb2 as _feedback_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    BINARY: _ClassVar[Task]
    REGRESSION: _ClassVar[Task]
TASK_UNSPECIFIED: Task
BINARY: Task
REGRESSION: Task

class PredictionRecord(_message.Message):
    __slots__ = ("prediction_id", "route", "variant", "model", "model_version", "tier", "time", "score", "shadow", "task", "threshold", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    route: str
    variant: str
    model: str
    model_version: str
    tier: str
    time: float
    score: float
    shadow: bool
    task: Task
    threshold: float
    features: _containers.ScalarMap[str, float]
    def __init__(self, prediction_id: _Optional[str] = ..., route: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., tier: _Optional[str] = ..., time: _Optional[float] = ..., score: _Optional[float] = ..., shadow: _Optional[bool] = ..., task: _Optional[_Union[Task, str]] = ..., threshold: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LogPredictionsRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[PredictionRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[PredictionRecord, _Mapping]]] = ...) -> None: ...

class LogPredictionsResponse(_message.Message):
    __slots__ = ("stored", "duplicates")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    stored: int
    duplicates: int
    def __init__(self, stored: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GetQualityRequest(_message.Message):
    __slots__ = ("route", "window_s", "since")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    route: str
    window_s: float
    since: float
    def __init__(self, route: _Optional[str] = ..., window_s: _Optional[float] = ..., since: _Optional[float] = ...) -> None: ...

class ReliabilityBin(_message.Message):
    __slots__ = ("lower", "upper", "count", "mean_score", "positive_fraction")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    count: int
    mean_score: float
    positive_fraction: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., count: _Optional[int] = ..., mean_score: _Optional[float] = ..., positive_fraction: _Optional[float] = ...) -> None: ...

class BinaryQuality(_message.Message):
    __slots__ = ("auc", "log_loss", "brier", "threshold", "precision", "recall", "f1", "predicted_positive_rate", "actual_positive_rate", "expected_calibration_error", "bins")
    AUC_FIELD_NUMBER: _ClassVar[int]
    LOG_LOSS_FIELD_NUMBER: _ClassVar[int]
    BRIER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_CALIBRATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    BINS_FIELD_NUMBER: _ClassVar[int]
    auc: float
    log_loss: float
    brier: float
    threshold: float
    precision: float
    recall: float
    f1: float
    predicted_positive_rate: float
    actual_positive_rate: float
    expected_calibration_error: float
    bins: _containers.RepeatedCompositeFieldContainer[ReliabilityBin]
    def __init__(self, auc: _Optional[float] = ..., log_loss: _Optional[float] = ..., brier: _Optional[float] = ..., threshold: _Optional[float] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., predicted_positive_rate: _Optional[float] = ..., actual_positive_rate: _Optional[float] = ..., expected_calibration_error: _Optional[float] = ..., bins: _Optional[_Iterable[_Union[ReliabilityBin, _Mapping]]] = ...) -> None: ...

class RegressionQuality(_message.Message):
    __slots__ = ("mae", "rmse")
    MAE_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    mae: float
    rmse: float
    def __init__(self, mae: _Optional[float] = ..., rmse: _Optional[float] = ...) -> None: ...

class VariantQuality(_message.Message):
    __slots__ = ("variant", "model", "model_version", "shadow", "predictions", "labelled", "label_coverage", "label_delay_p50_s", "label_delay_p90_s", "task", "binary", "regression")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    LABEL_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_DELAY_P50_S_FIELD_NUMBER: _ClassVar[int]
    LABEL_DELAY_P90_S_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    REGRESSION_FIELD_NUMBER: _ClassVar[int]
    variant: str
    model: str
    model_version: str
    shadow: bool
    predictions: int
    labelled: int
    label_coverage: float
    label_delay_p50_s: float
    label_delay_p90_s: float
    task: Task
    binary: BinaryQuality
    regression: RegressionQuality
    def __init__(self, variant: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., shadow: _Optional[bool] = ..., predictions: _Optional[int] = ..., labelled: _Optional[int] = ..., label_coverage: _Optional[float] = ..., label_delay_p50_s: _Optional[float] = ..., label_delay_p90_s: _Optional[float] = ..., task: _Optional[_Union[Task, str]] = ..., binary: _Optional[_Union[BinaryQuality, _Mapping]] = ..., regression: _Optional[_Union[RegressionQuality, _Mapping]] = ...) -> None: ...

class FeedbackCounts(_message.Message):
    __slots__ = ("accepted", "duplicates", "corrected", "pending", "unknown", "refused")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    corrected: int
    pending: int
    unknown: int
    refused: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., corrected: _Optional[int] = ..., pending: _Optional[int] = ..., unknown: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class GetQualityResponse(_message.Message):
    __slots__ = ("route", "variants", "feedback", "dropped")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    route: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantQuality]
    feedback: FeedbackCounts
    dropped: int
    def __init__(self, route: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantQuality, _Mapping]]] = ..., feedback: _Optional[_Union[FeedbackCounts, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class Criterion(_message.Message):
    __slots__ = ("metric", "limit")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    limit: float
    def __init__(self, metric: _Optional[str] = ..., limit: _Optional[float] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("route", "baseline", "canary", "since", "criteria", "alpha", "paired")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    route: str
    baseline: str
    canary: str
    since: float
    criteria: _containers.RepeatedCompositeFieldContainer[Criterion]
    alpha: float
    paired: bool
    def __init__(self, route: _Optional[str] = ..., baseline: _Optional[str] = ..., canary: _Optional[str] = ..., since: _Optional[float] = ..., criteria: _Optional[_Iterable[_Union[Criterion, _Mapping]]] = ..., alpha: _Optional[float] = ..., paired: _Optional[bool] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("metric", "verdict", "estimate", "lower", "upper", "e_value", "limit", "canary_value", "baseline_value", "canary_labels", "baseline_labels")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    E_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CANARY_VALUE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANARY_LABELS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_LABELS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    verdict: str
    estimate: float
    lower: float
    upper: float
    e_value: float
    limit: float
    canary_value: float
    baseline_value: float
    canary_labels: int
    baseline_labels: int
    def __init__(self, metric: _Optional[str] = ..., verdict: _Optional[str] = ..., estimate: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., e_value: _Optional[float] = ..., limit: _Optional[float] = ..., canary_value: _Optional[float] = ..., baseline_value: _Optional[float] = ..., canary_labels: _Optional[int] = ..., baseline_labels: _Optional[int] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("comparisons",)
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    comparisons: _containers.RepeatedCompositeFieldContainer[Comparison]
    def __init__(self, comparisons: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("route", "since", "with_labels")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    WITH_LABELS_FIELD_NUMBER: _ClassVar[int]
    route: str
    since: float
    with_labels: bool
    def __init__(self, route: _Optional[str] = ..., since: _Optional[float] = ..., with_labels: _Optional[bool] = ...) -> None: ...

class ExportRow(_message.Message):
    __slots__ = ("prediction_id", "variant", "model_version", "time", "score", "label", "features", "shadow")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    variant: str
    model_version: str
    time: float
    score: float
    label: float
    features: _containers.ScalarMap[str, float]
    shadow: bool
    def __init__(self, prediction_id: _Optional[str] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., time: _Optional[float] = ..., score: _Optional[float] = ..., label: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ..., shadow: _Optional[bool] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("rows", "feature_names")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ExportRow]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rows: _Optional[_Iterable[_Union[ExportRow, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ...) -> None: ...
