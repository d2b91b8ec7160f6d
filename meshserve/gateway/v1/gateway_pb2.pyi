from meshserve.feature.v1 import feature_pb2 as _feature_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    PRIMARY: _ClassVar[Tier]
    FALLBACK: _ClassVar[Tier]
    DEFAULT: _ClassVar[Tier]
TIER_UNSPECIFIED: Tier
PRIMARY: Tier
FALLBACK: Tier
DEFAULT: Tier

class Instance(_message.Message):
    __slots__ = ("entity_key", "features", "prediction_id")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _feature_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_feature_pb2.Value, _Mapping]] = ...) -> None: ...
    ENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    entity_key: str
    features: _containers.MessageMap[str, _feature_pb2.Value]
    prediction_id: str
    def __init__(self, entity_key: _Optional[str] = ..., features: _Optional[_Mapping[str, _feature_pb2.Value]] = ..., prediction_id: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("route", "instances")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    route: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, route: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("entity_key", "score", "from_cache", "variant", "model_version", "tier", "defaulted_features", "prediction_id")
    ENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DEFAULTED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    entity_key: str
    score: float
    from_cache: bool
    variant: str
    model_version: str
    tier: Tier
    defaulted_features: _containers.RepeatedScalarFieldContainer[str]
    prediction_id: str
    def __init__(self, entity_key: _Optional[str] = ..., score: _Optional[float] = ..., from_cache: _Optional[bool] = ..., variant: _Optional[str] = ..., model_version: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., defaulted_features: _Optional[_Iterable[str]] = ..., prediction_id: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("route", "variant", "model_name", "model_version", "predictions")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    route: str
    variant: str
    model_name: str
    model_version: str
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, route: _Optional[str] = ..., variant: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...
