import grpc_service_pb2 as _grpc_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServeVersionsRequest(_message.Message):
    __slots__ = ("model_name", "versions")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ServeVersionsResponse(_message.Message):
    __slots__ = ("ready_versions",)
    READY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ready_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ready_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("ready", "resolved_version", "metadata", "config")
    READY_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    resolved_version: str
    metadata: _grpc_service_pb2.ModelMetadataResponse
    config: _grpc_service_pb2.ModelConfigResponse
    def __init__(self, ready: _Optional[bool] = ..., resolved_version: _Optional[str] = ..., metadata: _Optional[_Union[_grpc_service_pb2.ModelMetadataResponse, _Mapping]] = ..., config: _Optional[_Union[_grpc_service_pb2.ModelConfigResponse, _Mapping]] = ...) -> None: ...
