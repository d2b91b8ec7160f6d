from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Label(_message.Message):
    __slots__ = ("prediction_id", "value", "event_time")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    value: float
    event_time: float
    def __init__(self, prediction_id: _Optional[str] = ..., value: _Optional[float] = ..., event_time: _Optional[float] = ...) -> None: ...

class SendFeedbackRequest(_message.Message):
    __slots__ = ("labels", "correct")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    correct: bool
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., correct: _Optional[bool] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("index", "prediction_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    prediction_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., prediction_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SendFeedbackResponse(_message.Message):
    __slots__ = ("accepted", "duplicates", "corrected", "pending", "refused")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CORRECTED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    corrected: int
    pending: int
    refused: _containers.RepeatedCompositeFieldContainer[Refused]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., corrected: _Optional[int] = ..., pending: _Optional[int] = ..., refused: _Optional[_Iterable[_Union[Refused, _Mapping]]] = ...) -> None: ...
