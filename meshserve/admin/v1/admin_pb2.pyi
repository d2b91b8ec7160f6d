from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetDriftRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("model", "feature", "psi", "drifting")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    DRIFTING_FIELD_NUMBER: _ClassVar[int]
    model: str
    feature: str
    psi: float
    drifting: bool
    def __init__(self, model: _Optional[str] = ..., feature: _Optional[str] = ..., psi: _Optional[float] = ..., drifting: _Optional[bool] = ...) -> None: ...

class GetDriftResponse(_message.Message):
    __slots__ = ("threshold", "samples", "features")
    class SamplesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    samples: _containers.ScalarMap[str, int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    def __init__(self, threshold: _Optional[float] = ..., samples: _Optional[_Mapping[str, int]] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ...) -> None: ...

class CacheStatsRequest(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: str
    def __init__(self, route: _Optional[str] = ...) -> None: ...

class RouteCacheStats(_message.Message):
    __slots__ = ("route", "enabled", "near_hits", "hits", "misses", "bypasses", "coalesced", "hit_ratio", "invalidations")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NEAR_HITS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BYPASSES_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    INVALIDATIONS_FIELD_NUMBER: _ClassVar[int]
    route: str
    enabled: bool
    near_hits: int
    hits: int
    misses: int
    bypasses: int
    coalesced: int
    hit_ratio: float
    invalidations: int
    def __init__(self, route: _Optional[str] = ..., enabled: _Optional[bool] = ..., near_hits: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., bypasses: _Optional[int] = ..., coalesced: _Optional[int] = ..., hit_ratio: _Optional[float] = ..., invalidations: _Optional[int] = ...) -> None: ...

class CacheStatsResponse(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[RouteCacheStats]
    def __init__(self, routes: _Optional[_Iterable[_Union[RouteCacheStats, _Mapping]]] = ...) -> None: ...

class InvalidateCacheRequest(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: str
    def __init__(self, route: _Optional[str] = ...) -> None: ...

class InvalidateCacheResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class SwitchVersionRequest(_message.Message):
    __slots__ = ("route", "variant", "version", "warmup_requests")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    route: str
    variant: str
    version: str
    warmup_requests: int
    def __init__(self, route: _Optional[str] = ..., variant: _Optional[str] = ..., version: _Optional[str] = ..., warmup_requests: _Optional[int] = ...) -> None: ...

class VariantStatus(_message.Message):
    __slots__ = ("name", "model", "version", "weight", "ejected", "requests", "errors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    version: str
    weight: float
    ejected: bool
    requests: int
    errors: int
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., weight: _Optional[float] = ..., ejected: _Optional[bool] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ...) -> None: ...

class ShadowStatus(_message.Message):
    __slots__ = ("variant", "percent", "compared", "failed", "mean_abs_score_diff", "label_agreement", "quality", "quality_note")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_SCORE_DIFF_FIELD_NUMBER: _ClassVar[int]
    LABEL_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_NOTE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    percent: float
    compared: int
    failed: int
    mean_abs_score_diff: float
    label_agreement: float
    quality: _containers.RepeatedCompositeFieldContainer[Comparison]
    quality_note: str
    def __init__(self, variant: _Optional[str] = ..., percent: _Optional[float] = ..., compared: _Optional[int] = ..., failed: _Optional[int] = ..., mean_abs_score_diff: _Optional[float] = ..., label_agreement: _Optional[float] = ..., quality: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ..., quality_note: _Optional[str] = ...) -> None: ...

class Comparison(_message.Message):
    __slots__ = ("metric", "verdict", "canary", "baseline", "estimate", "lower", "upper", "limit", "e_value", "alpha", "canary_samples", "baseline_samples", "min_samples")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    E_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    CANARY_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    metric: str
    verdict: str
    canary: float
    baseline: float
    estimate: float
    lower: float
    upper: float
    limit: float
    e_value: float
    alpha: float
    canary_samples: int
    baseline_samples: int
    min_samples: int
    def __init__(self, metric: _Optional[str] = ..., verdict: _Optional[str] = ..., canary: _Optional[float] = ..., baseline: _Optional[float] = ..., estimate: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., limit: _Optional[float] = ..., e_value: _Optional[float] = ..., alpha: _Optional[float] = ..., canary_samples: _Optional[int] = ..., baseline_samples: _Optional[int] = ..., min_samples: _Optional[int] = ...) -> None: ...

class JudgedWindow(_message.Message):
    __slots__ = ("variant", "requests", "errors", "error_rate", "p99_seconds")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    requests: int
    errors: int
    error_rate: float
    p99_seconds: float
    def __init__(self, variant: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., p99_seconds: _Optional[float] = ...) -> None: ...

class Judgement(_message.Message):
    __slots__ = ("time", "step", "verdict", "canary", "baseline", "max_error_rate_increase", "max_p99_ratio", "min_requests", "reason", "comparisons", "shadow")
    TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_RATIO_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    time: float
    step: int
    verdict: str
    canary: JudgedWindow
    baseline: JudgedWindow
    max_error_rate_increase: float
    max_p99_ratio: float
    min_requests: int
    reason: str
    comparisons: _containers.RepeatedCompositeFieldContainer[Comparison]
    shadow: str
    def __init__(self, time: _Optional[float] = ..., step: _Optional[int] = ..., verdict: _Optional[str] = ..., canary: _Optional[_Union[JudgedWindow, _Mapping]] = ..., baseline: _Optional[_Union[JudgedWindow, _Mapping]] = ..., max_error_rate_increase: _Optional[float] = ..., max_p99_ratio: _Optional[float] = ..., min_requests: _Optional[int] = ..., reason: _Optional[str] = ..., comparisons: _Optional[_Iterable[_Union[Comparison, _Mapping]]] = ..., shadow: _Optional[str] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("state", "canary", "step", "steps", "last_reason", "last_judgement", "gate")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_JUDGEMENT_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    canary: str
    step: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    last_reason: str
    last_judgement: Judgement
    gate: str
    def __init__(self, state: _Optional[str] = ..., canary: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., last_reason: _Optional[str] = ..., last_judgement: _Optional[_Union[Judgement, _Mapping]] = ..., gate: _Optional[str] = ...) -> None: ...

class RouteStatus(_message.Message):
    __slots__ = ("route", "variants", "fallback", "sticky", "shadows", "rollout")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    STICKY_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    route: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantStatus]
    fallback: _containers.RepeatedScalarFieldContainer[str]
    sticky: str
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowStatus]
    rollout: RolloutStatus
    def __init__(self, route: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantStatus, _Mapping]]] = ..., fallback: _Optional[_Iterable[str]] = ..., sticky: _Optional[str] = ..., shadows: _Optional[_Iterable[_Union[ShadowStatus, _Mapping]]] = ..., rollout: _Optional[_Union[RolloutStatus, _Mapping]] = ...) -> None: ...

class ListRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoutesResponse(_message.Message):
    __slots__ = ("routes", "routes_file")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FILE_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[RouteStatus]
    routes_file: str
    def __init__(self, routes: _Optional[_Iterable[_Union[RouteStatus, _Mapping]]] = ..., routes_file: _Optional[str] = ...) -> None: ...

class SetWeightsRequest(_message.Message):
    __slots__ = ("route", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    route: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, route: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("route", "variant")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    route: str
    variant: str
    def __init__(self, route: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("route", "reason")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    route: str
    reason: str
    def __init__(self, route: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetRolloutRequest(_message.Message):
    __slots__ = ("route", "action")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[SetRolloutRequest.Action]
        START: _ClassVar[SetRolloutRequest.Action]
        PAUSE: _ClassVar[SetRolloutRequest.Action]
        RESUME: _ClassVar[SetRolloutRequest.Action]
    ACTION_UNSPECIFIED: SetRolloutRequest.Action
    START: SetRolloutRequest.Action
    PAUSE: SetRolloutRequest.Action
    RESUME: SetRolloutRequest.Action
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    route: str
    action: SetRolloutRequest.Action
    def __init__(self, route: _Optional[str] = ..., action: _Optional[_Union[SetRolloutRequest.Action, str]] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("applied", "error", "routes")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    error: str
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, applied: _Optional[bool] = ..., error: _Optional[str] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("time", "who", "action", "route", "before", "after", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: str
    who: str
    action: str
    route: str
    before: str
    after: str
    reason: str
    def __init__(self, time: _Optional[str] = ..., who: _Optional[str] = ..., action: _Optional[str] = ..., route: _Optional[str] = ..., before: _Optional[str] = ..., after: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class GetAuditLogResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
