import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_STATUS_UNSPECIFIED: _ClassVar[FeatureStatus]
    PRESENT: _ClassVar[FeatureStatus]
    NOT_FOUND: _ClassVar[FeatureStatus]
    OUTSIDE_MAX_AGE: _ClassVar[FeatureStatus]
FEATURE_STATUS_UNSPECIFIED: FeatureStatus
PRESENT: FeatureStatus
NOT_FOUND: FeatureStatus
OUTSIDE_MAX_AGE: FeatureStatus

class FeatureRow(_message.Message):
    __slots__ = ("line", "entity_key", "values", "event_time")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    LINE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    line: int
    entity_key: str
    values: _containers.MessageMap[str, Value]
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, line: _Optional[int] = ..., entity_key: _Optional[str] = ..., values: _Optional[_Mapping[str, Value]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PushFeaturesRequest(_message.Message):
    __slots__ = ("entity", "rows")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    entity: str
    rows: _containers.RepeatedCompositeFieldContainer[FeatureRow]
    def __init__(self, entity: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[FeatureRow, _Mapping]]] = ...) -> None: ...

class PushFeaturesResponse(_message.Message):
    __slots__ = ("batches", "rows", "values")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    batches: int
    rows: int
    values: int
    def __init__(self, batches: _Optional[int] = ..., rows: _Optional[int] = ..., values: _Optional[int] = ...) -> None: ...

class GetFreshnessRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureFreshness(_message.Message):
    __slots__ = ("feature", "present", "not_found", "outside_max_age")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    feature: str
    present: int
    not_found: int
    outside_max_age: int
    def __init__(self, feature: _Optional[str] = ..., present: _Optional[int] = ..., not_found: _Optional[int] = ..., outside_max_age: _Optional[int] = ...) -> None: ...

class GetFreshnessResponse(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureFreshness]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureFreshness, _Mapping]]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("double_value", "int64_value", "string_value")
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    double_value: float
    int64_value: int
    string_value: str
    def __init__(self, double_value: _Optional[float] = ..., int64_value: _Optional[int] = ..., string_value: _Optional[str] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("entity", "entity_keys", "features")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ENTITY_KEYS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    entity: str
    entity_keys: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entity: _Optional[str] = ..., entity_keys: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...

class FeatureVector(_message.Message):
    __slots__ = ("entity_key", "values", "statuses", "event_timestamps")
    ENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    entity_key: str
    values: _containers.RepeatedCompositeFieldContainer[Value]
    statuses: _containers.RepeatedScalarFieldContainer[FeatureStatus]
    event_timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    def __init__(self, entity_key: _Optional[str] = ..., values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ..., statuses: _Optional[_Iterable[_Union[FeatureStatus, str]]] = ..., event_timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("feature_names", "vectors")
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.RepeatedCompositeFieldContainer[FeatureVector]
    def __init__(self, feature_names: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Iterable[_Union[FeatureVector, _Mapping]]] = ...) -> None: ...
