"""Checks an Open Inference Protocol request against the model's metadata, without decoding any tensor.

Every message names the input at fault, so a caller can fix the request without reading Triton's logs.
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


def validate_infer_request(
    request: service_pb2.ModelInferRequest,
    metadata: service_pb2.ModelMetadataResponse,
    max_batch_size: int,
    route: str,
) -> None:
    """Raise InvalidArgument naming the first input that is missing, unexpected, or of the wrong type/shape/size."""
    expected = {t.name: t for t in metadata.inputs}
    seen: set[str] = set()
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input"
        )
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        spec = expected.get(name)
        if spec is None:
            raise InvalidArgument(f"unexpected input {name!r}; route {route!r} takes {sorted(expected)}")
        if name in seen:
            raise InvalidArgument(f"input {name!r} appears more than once")
        seen.add(name)
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"input {name!r}: datatype {tensor.datatype} but the model expects {spec.datatype}"
            )
        shape = list(tensor.shape)
        if any(d < 0 for d in shape) or not _shape_matches(shape, list(spec.shape)):
            raise InvalidArgument(
                f"input {name!r}: shape {shape} does not match the model's {list(spec.shape)}"
            )
        if max_batch_size > 0 and shape and shape[0] > max_batch_size:
            raise InvalidArgument(
                f"input {name!r}: batch of {shape[0]} exceeds the model's limit of {max_batch_size}"
            )
        _check_size(name, tensor, shape, raw[index] if raw else None)
    missing = sorted(set(expected) - seen)
    if missing:
        raise InvalidArgument(f"missing input {missing[0]!r}; route {route!r} takes {sorted(expected)}")


def bytes_elements(raw: bytes) -> int | None:
    """How many elements a raw BYTES tensor holds (each a 4-byte little-endian length, then that many bytes), or
    None when the lengths do not add up to the data."""
    count, position = 0, 0
    while position + 4 <= len(raw):
        position += 4 + int.from_bytes(raw[position : position + 4], "little")
        count += 1
    return count if position == len(raw) else None


def _check_size(name: str, tensor, shape: list[int], raw: bytes | None) -> None:
    count = prod(shape)
    size = ELEMENT_BYTES.get(tensor.datatype)
    if raw is not None:
        if size is not None and len(raw) != count * size:
            raise InvalidArgument(
                f"input {name!r}: {len(raw)} bytes of data for shape {shape} {tensor.datatype} "
                f"(expects {count * size})"
            )
        if tensor.datatype == "BYTES":
            # checked here, per caller: a malformed tensor merged with others would fail them all at Triton
            elements = bytes_elements(raw)
            if elements != count:
                found = "lengths that do not add up" if elements is None else f"{elements} elements"
                raise InvalidArgument(f"input {name!r}: BYTES data holds {found} for shape {shape}")
        return
    field = CONTENTS_FIELD.get(tensor.datatype)
    values = getattr(tensor.contents, field) if field else ()
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(values)} values in contents for shape {shape} (expects {count})"
        )
    limits = NARROW_RANGE.get(tensor.datatype)
    if limits is not None and values and not limits[0] <= min(values) <= max(values) <= limits[1]:
        raise InvalidArgument(
            f"input {name!r}: a value in contents is outside the {tensor.datatype} range {limits}"
        )
