"""The Open Inference Protocol's REST form, as Triton and KServe serve it (JSON, plus Triton's binary tensor
extension), to and from the protobuf messages `InferenceApi` takes. Pure: no HTTP, no I/O.

An infer request becomes the `ModelInferRequest` that `tritonclient.grpc` would have sent for the same tensors:
every tensor's data as raw bytes (JSON data converted once, here), no REST-only parameters. So REST callers merge
with gRPC ones in the gateway, and Triton sees the same request either way. How the caller wants its outputs
(binary or JSON) stays here, in `ReplyForm`.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2, service_pb2

from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError

__all__ = [
    "RAW_BINARY",
    "InferCall",
    "ReplyForm",
    "cuda_register_request",
    "decode_infer_request",
    "decode_raw_infer_request",
    "encode_infer_response",
    "load_request",
    "log_settings_json",
    "log_settings_request",
    "message_json",
    "parse_json",
    "repository_index_json",
    "repository_index_request",
    "shared_memory_status_json",
    "system_register_request",
    "trace_setting_json",
    "trace_setting_request",
    "unload_request",
]

NUMPY_DTYPE = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
_ITEMSIZE = {name: np.dtype(dtype).itemsize for name, dtype in NUMPY_DTYPE.items()} | {"BF16": 2}
RAW_BINARY = (
    0  # Inference-Header-Content-Length 0: no JSON header, the body is one input's data (Triton's rule)
)
BINARY_ONLY = frozenset({"FP16", "BF16"})  # as Triton: these travel only as binary data over REST
_JSON_KINDS: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "true or false"),
    **dict.fromkeys(("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"),
                    (frozenset({int}), "integers")),
    **dict.fromkeys(("FP32", "FP64"), (frozenset({int, float}), "numbers")),
    "BYTES": (frozenset({str}), "strings"),
}  # fmt: skip
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "INT64": "int64_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip
_LENGTH = struct.Struct("<I")  # BYTES elements in raw form: a 4-byte little-endian length, then the bytes
_INT64_RANGE = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1
_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
})  # fmt: skip


# -- JSON documents ------------------------------------------------------------------------------------------
def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def parse_json(data: bytes, what: str = "the request body") -> Any:
    """Strict JSON (no NaN or Infinity); InvalidArgument saying where it breaks."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except RecursionError:
        raise InvalidArgument(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from None


def parse_object(data: bytes, what: str = "the request body") -> dict[str, Any]:
    """A JSON object; an empty body is an empty object (tritonclient sends none for some calls)."""
    if not data.strip():
        return {}
    document = parse_json(data, what)
    if not isinstance(document, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return document


def dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _with_numbers(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (MessageToDict of a `descriptor` message) with 64-bit integers as JSON numbers, as Triton writes
    them (protobuf's JSON mapping writes them as strings)."""
    for field in descriptor.fields:
        value = data.get(field.name)
        if value is None:
            continue
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            inner = kind.fields_by_name["value"]
            if inner.message_type is not None:
                for item in value.values():
                    _with_numbers(inner.message_type, item)
            elif inner.type in _INT64_TYPES:
                data[field.name] = {key: int(item) for key, item in value.items()}
        elif kind is not None:
            for item in value if field.is_repeated else [value]:
                _with_numbers(kind, item)
        elif field.type in _INT64_TYPES:
            data[field.name] = [int(item) for item in value] if field.is_repeated else int(value)
    return data


def message_json(message: Message, *, defaults: bool = True) -> dict[str, Any]:
    """A protobuf message as Triton's REST API writes it: proto field names, enum names, integers as numbers,
    and (with `defaults`) fields at their default values too."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults
    )
    return _with_numbers(message.DESCRIPTOR, data)


# -- scalar fields -------------------------------------------------------------------------------------------
def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{what} must be a JSON array")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} must be true or false")
    return value


def _int(value: Any, what: str, low: int = _INT64_RANGE[0], high: int = _INT64_RANGE[1]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be an integer in [{low}, {high}]")
    return value


def _set_parameter(target: Message, value: Any, what: str) -> None:
    """A JSON scalar into an InferParameter (or ModelRepositoryParameter), typed as tritonclient.grpc types it."""
    if isinstance(value, bool):
        target.bool_param = value  # type: ignore[attr-defined]
    elif isinstance(value, int) and _INT64_RANGE[0] <= value <= _INT64_RANGE[1]:
        target.int64_param = value  # type: ignore[attr-defined]
    elif isinstance(value, int) and 0 <= value <= _UINT64_MAX and hasattr(target, "uint64_param"):
        target.uint64_param = value  # type: ignore[attr-defined]
    elif isinstance(value, float) and hasattr(target, "double_param"):
        target.double_param = value  # type: ignore[attr-defined]
    elif isinstance(value, str):
        target.string_param = value  # type: ignore[attr-defined]
    else:
        kinds = (
            "a string, a number or a boolean"
            if hasattr(target, "double_param")
            else "a string, an integer or a boolean"
        )
        raise InvalidArgument(f"{what} must be {kinds}")


def _oneof_value(message: Message) -> Any:
    """The value of a parameter message's one set field (None when none is set)."""
    which = message.WhichOneof(message.DESCRIPTOR.oneofs[0].name)
    return None if which is None else getattr(message, which)


def _parameters_json(parameters: Mapping[str, Message]) -> dict[str, Any]:
    return {key: _oneof_value(value) for key, value in parameters.items()}


# -- inference -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReplyForm:
    """How the caller wants its outputs: as binary data after the JSON header, or as JSON."""

    binary_default: bool = False  # the request's `binary_data_output` parameter
    binary: Mapping[str, bool] | None = None  # per requested output: its `binary_data` parameter
    in_shared_memory: frozenset[str] = (
        frozenset()
    )  # outputs Triton writes to the caller's region: no data here

    def wants_binary(self, output: str) -> bool:
        return (self.binary or {}).get(output, self.binary_default)


@dataclass(frozen=True, slots=True)
class InferCall:
    request: service_pb2.ModelInferRequest
    reply_form: ReplyForm
    time_left_s: float | None  # from the OIP `timeout` parameter (µs), if the caller gave one


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name!r}: data must be a JSON array")
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []

    def walk(items: list[Any]) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                flat.append(item)

    walk(data)
    return flat


def _json_tensor_bytes(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON tensor data in Triton's raw layout, checked against the tensor's datatype and shape."""
    if datatype in BINARY_ONLY:
        raise InvalidArgument(
            f"input {name!r}: {datatype} data travels only in binary over REST (binary_data_size), as in Triton"
        )
    kinds = _JSON_KINDS.get(datatype)
    if kinds is None:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}")
    flat = _flatten(data, name)
    count = prod(shape)
    if len(flat) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(flat)} values in data for shape {shape} (expects {count})"
        )
    allowed, described = kinds
    if not set(map(type, flat)) <= allowed:
        raise InvalidArgument(f"input {name!r}: {datatype} data must be {described}")
    if datatype == "BYTES":
        items = [item.encode() for item in flat]
        return b"".join(_LENGTH.pack(len(item)) + item for item in items)
    dtype = NUMPY_DTYPE[datatype]
    if allowed == {int} and flat:
        info = np.iinfo(dtype)
        if not info.min <= min(flat) <= max(flat) <= info.max:
            raise InvalidArgument(
                f"input {name!r}: a value is outside the {datatype} range [{info.min}, {info.max}]"
            )
    if dtype in (np.float32, np.float64):
        with np.errstate(over="ignore"):
            values = np.array(flat, dtype=np.float64).astype(dtype)
        if not np.isfinite(values).all():
            raise InvalidArgument(f"input {name!r}: a value is outside the {datatype} range")
        return values.tobytes()
    return np.array(flat, dtype=dtype).tobytes()


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _INT64_RANGE[1] for d in value
    ):
        raise InvalidArgument(f"input {name!r}: shape must be an array of non-negative integers")
    return value


def _tensor_name(item: Any, where: str) -> str:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{where} needs a name")
    return name


def _request_parameters(request: service_pb2.ModelInferRequest, document: dict[str, Any]) -> tuple[bool, int]:
    """The request's parameters into `request`; returns its `binary_data_output` and `timeout` (µs, 0 if none)."""
    binary_default, timeout_us = False, 0
    for key, value in _object(document.get("parameters"), "the request's parameters").items():
        what = f"parameter {key!r}"
        if key == "binary_data_output":
            binary_default = _bool(value, what)
        elif key == "timeout":
            timeout_us = _int(value, what, low=0)
            request.parameters[key].int64_param = timeout_us
        elif key == "priority":
            request.parameters[key].uint64_param = _int(value, what, low=0, high=_UINT64_MAX)
        else:
            _set_parameter(request.parameters[key], value, what)
    return binary_default, timeout_us


def _inputs(request: service_pb2.ModelInferRequest, document: dict[str, Any], binary: memoryview) -> None:
    """The request's inputs into `request`, each with its data as raw bytes: from `binary` (the data after the
    JSON header, in input order) or converted from JSON. Inputs in shared memory carry none, as from
    tritonclient.grpc."""
    offset = 0
    for n, item in enumerate(_list(document.get("inputs"), "inputs")):
        name = _tensor_name(item, f"inputs[{n}]")
        shape = _shape(item.get("shape"), name)
        datatype = _string(item.get("datatype"), f"input {name!r}: datatype")
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = None
        for key, value in _object(item.get("parameters"), f"input {name!r}: parameters").items():
            if key == "binary_data_size":
                size = _int(value, f"input {name!r}: binary_data_size", low=0)
            else:
                _set_parameter(tensor.parameters[key], value, f"input {name!r}: parameter {key!r}")
        sources = ("data" in item) + (size is not None) + ("shared_memory_region" in tensor.parameters)
        if sources != 1:
            raise InvalidArgument(
                f"input {name!r}: give its data in exactly one way (data, binary_data_size or "
                f"shared_memory_region); it has {sources}"
            )
        if size is not None:
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size} but only {len(binary) - offset} bytes of binary "
                    "data are left"
                )
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif "data" in item:
            request.raw_input_contents.append(_json_tensor_bytes(name, datatype, shape, item["data"]))
    if offset != len(binary):
        raise InvalidArgument(
            f"{len(binary)} bytes of binary data after the inference request, but its inputs' binary_data_size "
            f"add up to {offset}"
        )


def _outputs(
    request: service_pb2.ModelInferRequest, document: dict[str, Any], binary_default: bool
) -> ReplyForm:
    """The requested outputs into `request`; what the caller asked of their form stays in the ReplyForm."""
    binary: dict[str, bool] = {}
    for n, item in enumerate(_list(document.get("outputs"), "outputs")):
        name = _tensor_name(item, f"outputs[{n}]")
        tensor = request.outputs.add(name=name)
        for key, value in _object(item.get("parameters"), f"output {name!r}: parameters").items():
            if key == "binary_data":
                binary[name] = _bool(value, f"output {name!r}: binary_data")
            else:
                _set_parameter(tensor.parameters[key], value, f"output {name!r}: parameter {key!r}")
    shared = frozenset(t.name for t in request.outputs if "shared_memory_region" in t.parameters)
    return ReplyForm(binary_default, binary or None, shared)


def decode_infer_request(body: bytes, header_length: int | None, model: str, version: str) -> InferCall:
    """A REST infer request (the JSON header, then `header_length`'s binary data if given) for `model` and
    `version` (from the URL). InvalidArgument, naming the input, for anything malformed. A raw binary request
    (`header_length` 0) is `decode_raw_infer_request`'s."""
    if header_length == RAW_BINARY:
        raise ValueError("a raw binary request has no JSON header: decode it with decode_raw_infer_request")
    if header_length is None:
        header, binary = body, memoryview(b"")
    elif header_length <= len(body):
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        raise InvalidArgument(
            f"Inference-Header-Content-Length is {header_length} but the body holds {len(body)} bytes"
        )
    document = parse_json(header, "the inference request")
    if not isinstance(document, dict):
        raise InvalidArgument("the inference request must be a JSON object")
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    if "id" in document:
        request.id = _string(document["id"], "the request id")
    binary_default, timeout_us = _request_parameters(request, document)
    _inputs(request, document, binary)
    form = _outputs(request, document, binary_default)
    return InferCall(request, form, timeout_us / 1_000_000 if timeout_us else None)


def _raw_input(config: model_config_pb2.ModelConfig, model: str) -> model_config_pb2.ModelInput:
    if len(config.input) != 1:
        names = ", ".join(repr(tensor.name) for tensor in config.input)
        raise InvalidArgument(
            f"a raw binary request (Inference-Header-Content-Length 0) needs a model of exactly 1 input to deduce "
            f"the tensor from, but model {model!r} has {len(config.input)}: {names}; send a JSON inference header"
        )
    return config.input[0]


def decode_raw_infer_request(
    body: bytes, model: str, version: str, config: model_config_pb2.ModelConfig
) -> InferCall:
    """A raw binary request, Triton's binary-data extension without a JSON header (Inference-Header-Content-Length
    0): the whole body is the data of the one input of `config` (the model's configuration). Its shape is deduced
    as Triton deduces it: a batch of 1 when the model batches, then the input's dims, the one variable-sized
    dimension (at most one) taken from the byte count; a BYTES input must have shape [1] and the body is its one
    element. Every output comes back, in binary. InvalidArgument, naming the input, when the body does not fit."""
    tensor = _raw_input(config, model)
    datatype = model_config_pb2.DataType.Name(tensor.data_type).removeprefix("TYPE_")
    datatype = "BYTES" if datatype == "STRING" else datatype
    shape = [1, *tensor.dims] if config.max_batch_size > 0 else list(tensor.dims)
    variable = [axis for axis, dim in enumerate(shape) if dim == -1]
    if len(variable) > 1:
        raise InvalidArgument(
            f"input {tensor.name!r}: its shape {shape} cannot be deduced from a raw binary request: more than one "
            "variable-sized dimension; send a JSON inference header"
        )
    elements = prod(dim for dim in shape if dim != -1)
    if datatype == "BYTES":
        if variable or elements != 1:
            raise InvalidArgument(
                f"input {tensor.name!r}: a raw binary request for a BYTES input needs the input's shape to be [1]; "
                f"it is {list(tensor.dims)}"
            )
        data = _LENGTH.pack(len(body)) + body  # the one element, in Triton's raw BYTES layout
    else:
        itemsize = _ITEMSIZE.get(datatype)
        if itemsize is None:
            raise InvalidArgument(
                f"input {tensor.name!r}: {datatype} data cannot come in a raw binary request"
            )
        row = elements * itemsize
        if variable and row and len(body) % row == 0:
            shape[variable[0]] = len(body) // row
        elif variable and len(body) == 0:
            shape[variable[0]] = 0
        elif variable or len(body) != row:
            expects = f"a multiple of {row}" if variable else str(row)
            raise InvalidArgument(
                f"input {tensor.name!r}: byte size mismatch for model {model!r}: a raw binary request of shape "
                f"{shape} and datatype {datatype} takes {expects} bytes, got {len(body)}"
            )
        data = body
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=tensor.name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(data)
    return InferCall(request, ReplyForm(binary_default=True), None)


def _contents_bytes(tensor: service_pb2.ModelInferResponse.InferOutputTensor) -> bytes:
    """An output's typed contents in Triton's raw layout (Triton's gRPC answers carry raw bytes already)."""
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in tensor.contents.bytes_contents)
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        return b""
    return np.asarray(getattr(tensor.contents, field), dtype=NUMPY_DTYPE[tensor.datatype]).tobytes()


def _json_values(name: str, datatype: str, data: bytes) -> list[Any]:
    """An output's raw data as a flat JSON array."""
    if datatype in BINARY_ONLY:
        raise InvalidArgument(
            f"output {name!r} is {datatype}, which REST carries only in binary: request it with binary_data"
        )
    if datatype == "BYTES":
        items, position = [], 0
        while position + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            position += _LENGTH.size
            items.append(bytes(data[position : position + length]))
            position += length
        if position != len(data):
            raise MeshError(f"output {name!r}: BYTES data from the model does not parse", ErrorCode.INTERNAL)
        try:
            return [item.decode() for item in items]
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"output {name!r} holds bytes that are not UTF-8, which JSON cannot carry: request it with "
                "binary_data"
            ) from None
    dtype = NUMPY_DTYPE.get(datatype)
    if dtype is None or len(data) % np.dtype(dtype).itemsize:
        raise MeshError(
            f"output {name!r}: {len(data)} bytes of {datatype} from the model", ErrorCode.INTERNAL
        )
    return np.frombuffer(data, dtype=dtype).tolist()


def encode_infer_response(reply: service_pb2.ModelInferResponse, form: ReplyForm) -> tuple[bytes, int | None]:
    """The REST body for `reply`, and the length of its JSON header when binary data follows it (the
    Inference-Header-Content-Length), else None."""
    document: dict[str, Any] = {"model_name": reply.model_name, "model_version": reply.model_version}
    if reply.id:
        document["id"] = reply.id
    if reply.parameters:
        document["parameters"] = _parameters_json(reply.parameters)
    raw = reply.raw_output_contents
    outputs, binaries = [], []
    for index, tensor in enumerate(reply.outputs):
        output: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        parameters = _parameters_json(tensor.parameters)
        if tensor.name not in form.in_shared_memory and "shared_memory_region" not in parameters:
            data = raw[index] if index < len(raw) else _contents_bytes(tensor)
            if form.wants_binary(tensor.name):
                parameters["binary_data_size"] = len(data)
                binaries.append(data)
            else:
                output["data"] = _json_values(tensor.name, tensor.datatype, data)
        if parameters:
            output["parameters"] = parameters
        outputs.append(output)
    document["outputs"] = outputs
    header = dumps(document)
    if not binaries:
        return header, None
    return b"".join([header, *binaries]), len(header)


# -- model repository, shared memory, trace and log settings -------------------------------------------------
def repository_index_request(document: dict[str, Any]) -> service_pb2.RepositoryIndexRequest:
    return service_pb2.RepositoryIndexRequest(ready=_bool(document.get("ready", False), "ready"))


def repository_index_json(reply: service_pb2.RepositoryIndexResponse) -> list[dict[str, Any]]:
    """As Triton: an array of {name, version, state, reason}, empty fields left out."""
    return [message_json(model, defaults=False) for model in reply.models]


def _repository_parameters(target: Mapping[str, Message], document: dict[str, Any]) -> None:
    for key, value in _object(document.get("parameters"), "parameters").items():
        what = f"parameter {key!r}"
        if key.startswith("file:"):  # a file of the model directory sent with the load, base64-encoded
            try:
                target[key].bytes_param = base64.b64decode(_string(value, what), validate=True)  # type: ignore[attr-defined]
            except binascii.Error:
                raise InvalidArgument(f"{what} must be base64-encoded file content") from None
        else:
            _set_parameter(target[key], value, what)


def load_request(model: str, document: dict[str, Any]) -> service_pb2.RepositoryModelLoadRequest:
    """Triton's load: `parameters` may hold `config` (the model configuration, as a JSON string) and
    `file:<path>` entries (base64 file content) that form the model directory."""
    request = service_pb2.RepositoryModelLoadRequest(model_name=model)
    _repository_parameters(request.parameters, document)
    return request


def unload_request(model: str, document: dict[str, Any]) -> service_pb2.RepositoryModelUnloadRequest:
    request = service_pb2.RepositoryModelUnloadRequest(model_name=model)
    _repository_parameters(request.parameters, document)
    return request


def system_register_request(
    region: str, document: dict[str, Any]
) -> service_pb2.SystemSharedMemoryRegisterRequest:
    return service_pb2.SystemSharedMemoryRegisterRequest(
        name=region,
        key=_string(document.get("key"), "key"),
        offset=_int(document.get("offset", 0), "offset", low=0, high=_UINT64_MAX),
        byte_size=_int(document.get("byte_size"), "byte_size", low=0, high=_UINT64_MAX),
    )


def cuda_register_request(
    region: str, document: dict[str, Any]
) -> service_pb2.CudaSharedMemoryRegisterRequest:
    handle = _object(document.get("raw_handle"), "raw_handle").get("b64")
    try:
        raw_handle = base64.b64decode(_string(handle, "raw_handle.b64"), validate=True)
    except binascii.Error:
        raise InvalidArgument("raw_handle.b64 must be base64") from None
    return service_pb2.CudaSharedMemoryRegisterRequest(
        name=region,
        raw_handle=raw_handle,
        device_id=_int(document.get("device_id", 0), "device_id"),
        byte_size=_int(document.get("byte_size"), "byte_size", low=0, high=_UINT64_MAX),
    )


def shared_memory_status_json(
    reply: service_pb2.SystemSharedMemoryStatusResponse | service_pb2.CudaSharedMemoryStatusResponse,
) -> list[dict[str, Any]]:
    """As Triton: an array of the regions' status."""
    return [message_json(region) for region in reply.regions.values()]


def trace_setting_request(model: str, document: dict[str, Any]) -> service_pb2.TraceSettingRequest:
    """Each setting is a string or an array of strings; null clears it (an empty value, as in gRPC)."""
    request = service_pb2.TraceSettingRequest(model_name=model)
    for key, value in document.items():
        if value is None:
            values = []
        elif isinstance(value, str):
            values = [value]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values = value
        else:
            raise InvalidArgument(f"trace setting {key!r} must be a string, an array of strings or null")
        request.settings[key].value.extend(values)
    return request


def trace_setting_json(reply: service_pb2.TraceSettingResponse) -> dict[str, Any]:
    """As Triton: `trace_level` as an array, every other setting as its one string."""
    return {
        key: value.value[0] if key != "trace_level" and len(value.value) == 1 else list(value.value)
        for key, value in reply.settings.items()
    }


def log_settings_request(document: dict[str, Any]) -> service_pb2.LogSettingsRequest:
    request = service_pb2.LogSettingsRequest()
    for key, value in document.items():
        setting = request.settings[key]
        if isinstance(value, bool):
            setting.bool_param = value
        elif isinstance(value, int) and 0 <= value < 2**32:
            setting.uint32_param = value
        elif isinstance(value, str):
            setting.string_param = value
        else:
            raise InvalidArgument(
                f"log setting {key!r} must be a boolean, a non-negative integer or a string"
            )
    return request


def log_settings_json(reply: service_pb2.LogSettingsResponse) -> dict[str, Any]:
    return _parameters_json(reply.settings)
