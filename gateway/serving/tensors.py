"""Checks an Open Inference Protocol request against the model's metadata, without decoding any tensor.

Every message names the input at fault in the words Triton itself uses, so a caller can fix the request without
reading Triton's logs, and a client written against Triton sees what it already expects.
"""

from __future__ import annotations

from math import prod

from tritonclient.grpc import service_pb2

from meshserve.core.errors import InvalidArgument

ELEMENT_BYTES = {
    "BOOL": 1, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2, "FP16": 2, "BF16": 2,
    "INT32": 4, "UINT32": 4, "FP32": 4, "INT64": 8, "UINT64": 8, "FP64": 8,
}  # fmt: skip
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "INT64": "int64_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


# Typed contents carried in a wider protobuf field than the datatype (int_contents is int32, uint_contents uint32)
NARROW_RANGE = {"INT8": (-128, 127), "INT16": (-32768, 32767), "UINT8": (0, 255), "UINT16": (0, 65535)}


def _shape_matches(shape: list[int], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(
        e == -1 or s == e for s, e in zip(shape, expected, strict=True)
    )


def _dims(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"  # as Triton prints them


def in_shared_memory(tensor) -> bool:
    return "shared_memory_region" in tensor.parameters


def validate_infer_request(
    request: service_pb2.ModelInferRequest,
    metadata: service_pb2.ModelMetadataResponse,
    max_batch_size: int,
    model: str,
) -> None:
    """Raise InvalidArgument for the first input that is missing, unexpected, or of the wrong type/shape/size.

    The wording is Triton's own, so a client written against Triton sees the message it already handles.
    """
    expected = {t.name: t for t in metadata.inputs}
    seen: set[str] = set()
    raw = list(request.raw_input_contents)
    in_memory = [in_shared_memory(t) for t in request.inputs]
    _check_sources(request, in_memory, bool(raw), model)
    if raw and len(raw) != in_memory.count(False):
        raise InvalidArgument(
            f"expected {in_memory.count(False)} raw_input_contents but got {len(raw)} for model '{model}'; "
            "send one per input not in shared memory"
        )
    data = iter(raw)
    for tensor, shared in zip(request.inputs, in_memory, strict=True):
        name = tensor.name
        spec = expected.get(name)
        if spec is None:
            raise InvalidArgument(f"unexpected inference input '{name}' for model '{model}'")
        if name in seen:
            raise InvalidArgument(f"input '{name}' already exists in request")
        seen.add(name)
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{name}' data-type is '{tensor.datatype}', "
                f"but model '{model}' expects '{spec.datatype}'"
            )
        shape = list(tensor.shape)
        if any(d < 0 for d in shape) or not _shape_matches(shape, list(spec.shape)):
            raise InvalidArgument(
                f"unexpected shape for input '{name}' for model '{model}'. "
                f"Expected {_dims(spec.shape)}, got {_dims(shape)}"
            )
        if max_batch_size > 0 and shape and shape[0] > max_batch_size:
            raise InvalidArgument(f"inference request batch-size must be <= {max_batch_size} for '{model}'")
        where = f"input '{name}' for model '{model}'"
        if shared:
            _check_shared(where, tensor, shape)
        else:
            _check_size(where, tensor, shape, next(data) if raw else None)
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidArgument(
            f"expected {len(expected)} inputs but got {len(seen)} inputs for model '{model}'. "
            f"Got input(s) {sorted(seen)}, but missing required input(s) {missing}. "
            "Please provide all required input(s)."
        )


def bytes_elements(raw: bytes) -> int | None:
    """How many elements a raw BYTES tensor holds (each a 4-byte little-endian length, then that many bytes), or
    None when the lengths do not add up to the data."""
    count, position = 0, 0
    while position + 4 <= len(raw):
        position += 4 + int.from_bytes(raw[position : position + 4], "little")
        count += 1
    return count if position == len(raw) else None


def _size_mismatch(where: str, expected: int, got: int) -> InvalidArgument:
    return InvalidArgument(f"input byte size mismatch for {where}. Expected {expected}, got {got}")


def _check_sources(
    request: service_pb2.ModelInferRequest, in_memory: list[bool], raw: bool, model: str
) -> None:
    """Each input's data comes from one place. Checked first, input by input, in Triton's words: Triton reads
    where the data is before it looks at names, types and shapes, and clients check for these messages."""
    for tensor, shared in zip(request.inputs, in_memory, strict=True):
        if not tensor.HasField("contents"):
            continue
        if shared:
            raise InvalidArgument(
                f"unexpected 'content' provided when using shared memory for input tensor '{tensor.name}' "
                f"for model '{model}'"
            )
        if raw:
            raise InvalidArgument(
                "contents field must not be specified when using raw_input_contents for "
                f"'{tensor.name}' for model '{model}'"
            )


def _check_shared(where: str, tensor, shape: list[int]) -> None:
    """Data in a shared-memory region is Triton's to read; only the declared size can be checked here."""
    size = ELEMENT_BYTES.get(tensor.datatype)
    declared = tensor.parameters.get("shared_memory_byte_size")
    if size is not None and declared is not None and declared.int64_param != prod(shape) * size:
        raise _size_mismatch(where, prod(shape) * size, declared.int64_param)


def _check_size(where: str, tensor, shape: list[int], raw: bytes | None) -> None:
    count = prod(shape)
    size = ELEMENT_BYTES.get(tensor.datatype)
    if raw is not None:
        if size is not None and len(raw) != count * size:
            raise _size_mismatch(where, count * size, len(raw))
        if tensor.datatype == "BYTES":
            # checked here, per caller: a malformed tensor merged with others would fail them all at Triton
            elements = bytes_elements(raw)
            if elements != count:
                found = "lengths that do not add up" if elements is None else f"{elements} elements"
                raise InvalidArgument(
                    f"BYTES data of {where} holds {found}; its shape {_dims(shape)} needs {count}"
                )
        return
    field = CONTENTS_FIELD.get(tensor.datatype)
    values = getattr(tensor.contents, field) if field else ()
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements in contents for {where}. Expected {count}, got {len(values)}"
        )
    limits = NARROW_RANGE.get(tensor.datatype)
    if limits is not None and values and not limits[0] <= min(values) <= max(values) <= limits[1]:
        raise InvalidArgument(
            f"a value in contents of {where} is outside the {tensor.datatype} range {limits}"
        )
