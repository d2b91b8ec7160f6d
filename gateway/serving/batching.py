"""Merging Open Inference Protocol requests along the batch dimension, and splitting the reply. Pure; no gRPC.

Requests may share one call to Triton when Triton's own dynamic batcher could have put them in one execution:
the same model version, the same inputs (names, datatypes, every dimension but the first), the same requested
outputs and the same parameters (the request id and Triton's per-request timeout apart), for a model that batches
dynamically (max_batch_size > 0, a dynamic batcher, no sequence batching, not decoupled, no ragged inputs).
Anything else goes alone, unchanged. A merged request carries raw bytes only: typed contents are converted once,
per caller, before merging.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.serving.tensors import CONTENTS_FIELD

__all__ = [
    "BatchPlan",
    "SplitError",
    "batch_plan",
    "merge",
    "merge_key",
    "rows_of",
    "split",
    "timeout_us",
    "to_raw",
]

TIMEOUT = "timeout"  # Triton's per-request timeout parameter, in microseconds
# Request parameters that tie a request to others (a sequence) or to memory outside the message.
_ALONE_PARAMETERS = frozenset({"sequence_id", "sequence_start", "sequence_end"})
_NUMPY = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
_LENGTH = struct.Struct("<I")  # BYTES elements in raw form: a 4-byte little-endian length, then the bytes


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """How calls to one model version are coalesced, derived from its config and the gateway's settings."""

    mergeable: bool
    max_rows: int  # rows in one merged request: the model's max_batch_size unless set lower
    max_in_flight: int  # calls out at once before new work waits to be merged
    why_alone: str = ""  # why requests to this model are never merged


def batch_plan(config: model_config_pb2.ModelConfig, max_in_flight: int = 0, max_rows: int = 0) -> BatchPlan:
    """The plan for a model. By default one call may be out per execution instance: while an instance runs a
    batch, the next one forms in the gateway. Merged rows never exceed the model's max_batch_size."""
    instances = sum(max(g.count, 1) * max(len(g.gpus), 1) for g in config.instance_group) or 1
    in_flight = max_in_flight or instances
    limit = config.max_batch_size
    rows = min(max_rows, limit) if max_rows and limit else limit
    why = ""
    if limit <= 0:
        why = "the model does not batch (max_batch_size 0)"
    elif not config.HasField("dynamic_batching"):
        why = "the model has no dynamic batcher"
    elif config.HasField("sequence_batching"):
        why = "the model is stateful (sequence batching)"
    elif config.model_transaction_policy.decoupled:
        why = "the model is decoupled"
    elif any(t.allow_ragged_batch for t in config.input):
        why = "the model takes ragged batches"
    return BatchPlan(not why, max(rows, 1), in_flight, why)


def _parameters(parameters, skip: str = "") -> tuple:
    return tuple(sorted((k, v.SerializeToString()) for k, v in parameters.items() if k != skip))


def rows_of(request: service_pb2.ModelInferRequest) -> int:
    return request.inputs[0].shape[0]


def merge_key(request: service_pb2.ModelInferRequest) -> Hashable | None:
    """What a request must share with others to be merged with them; None when it must go alone."""
    if not request.inputs:
        return None
    rows = -1
    inputs = []
    for tensor in request.inputs:
        shape = tensor.shape
        if not shape or (rows != -1 and shape[0] != rows) or tensor.parameters:
            return None  # no batch dimension, inconsistent batches, or data in shared memory
        rows = shape[0]
        inputs.append((tensor.name, tensor.datatype, tuple(shape[1:])))
    outputs = []
    for output in request.outputs:
        if "shared_memory_region" in output.parameters:
            return None
        outputs.append((output.name, _parameters(output.parameters) if output.parameters else ()))
    parameters = ()
    if request.parameters:
        if not _ALONE_PARAMETERS.isdisjoint(request.parameters):
            return None
        parameters = _parameters(request.parameters, skip=TIMEOUT)
    return (request.model_name, request.model_version, tuple(inputs), tuple(outputs), parameters)


def _raw(tensor: service_pb2.ModelInferRequest.InferInputTensor) -> bytes:
    """A tensor's typed contents in Triton's raw layout."""
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in tensor.contents.bytes_contents)
    values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
    return np.asarray(values, dtype=_NUMPY[tensor.datatype]).tobytes()  # in range: validated per caller


def to_raw(request: service_pb2.ModelInferRequest) -> None:
    """Move typed contents to raw bytes, in place: the form a merged request takes (per caller, after
    `gateway.serving.tensors` has checked the values)."""
    if request.raw_input_contents or not request.inputs:
        return
    raw = [_raw(tensor) for tensor in request.inputs]
    for tensor in request.inputs:
        tensor.ClearField("contents")
    request.raw_input_contents.extend(raw)


def merge(requests: Sequence[service_pb2.ModelInferRequest]) -> service_pb2.ModelInferRequest:
    """One request holding every row of `requests` (which share a merge key, and carry raw contents), in
    order."""
    first = requests[0]
    total = sum(rows_of(r) for r in requests)
    merged = service_pb2.ModelInferRequest(model_name=first.model_name, model_version=first.model_version)
    for name, value in first.parameters.items():
        if name != TIMEOUT:
            merged.parameters[name].CopyFrom(value)
    for index, tensor in enumerate(first.inputs):
        merged.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=[total, *tensor.shape[1:]])
        merged.raw_input_contents.append(
            b"".join(
                r.raw_input_contents[index] if r.raw_input_contents else _raw(r.inputs[index])
                for r in requests
            )
        )
    merged.outputs.extend(first.outputs)
    return merged


class SplitError(ValueError):
    """A merged reply that cannot be cut back into the members' rows (the model broke the batch contract)."""


def _row_bounds_bytes(data: bytes, rows: int, per_row: int) -> list[int]:
    """Byte offsets where each row of a raw BYTES tensor starts (and the end)."""
    bounds, position = [0], 0
    for _ in range(rows):
        for _ in range(per_row):
            (length,) = _LENGTH.unpack_from(data, position)
            position += _LENGTH.size + length
        bounds.append(position)
    if position != len(data):
        raise SplitError(f"BYTES output holds {len(data)} bytes, its elements {position}")
    return bounds


def split(
    reply: service_pb2.ModelInferResponse, requests: Sequence[service_pb2.ModelInferRequest]
) -> list[service_pb2.ModelInferResponse]:
    """The merged `reply` cut into one response per request: its own id, its own rows of every output."""
    counts = [rows_of(r) for r in requests]
    total = sum(counts)
    raw = bool(reply.raw_output_contents)
    pieces: list[list[tuple[list[int], bytes | None, list | None]]] = [[] for _ in requests]
    for index, output in enumerate(reply.outputs):
        shape = list(output.shape)
        if not shape or shape[0] != total:
            raise SplitError(f"output {output.name!r} has shape {shape} for a merged batch of {total} rows")
        per_row = prod(shape[1:])
        rest = shape[1:]
        if raw:
            data = reply.raw_output_contents[index]
            if output.datatype == "BYTES":
                bounds = _row_bounds_bytes(data, total, per_row)
            else:
                row_bytes, leftover = divmod(len(data), total) if total else (0, len(data))
                if leftover:
                    raise SplitError(f"output {output.name!r}: {len(data)} bytes for {total} rows")
                bounds = [row * row_bytes for row in range(total + 1)]
            start = 0
            for n, count in enumerate(counts):
                pieces[n].append(([count, *rest], data[bounds[start] : bounds[start + count]], None))
                start += count
        else:
            values = getattr(output.contents, CONTENTS_FIELD[output.datatype])
            start = 0
            for n, count in enumerate(counts):
                pieces[n].append(([count, *rest], None, values[start * per_row : (start + count) * per_row]))
                start += count
    responses = []
    for request, outputs in zip(requests, pieces, strict=True):
        response = service_pb2.ModelInferResponse(
            model_name=reply.model_name, model_version=reply.model_version, id=request.id
        )
        for name, value in reply.parameters.items():
            response.parameters[name].CopyFrom(value)
        for output, (shape, data, values) in zip(reply.outputs, outputs, strict=True):
            tensor = response.outputs.add(name=output.name, datatype=output.datatype, shape=shape)
            for name, value in output.parameters.items():
                tensor.parameters[name].CopyFrom(value)
            if data is not None:
                response.raw_output_contents.append(data)
            else:
                getattr(tensor.contents, CONTENTS_FIELD[output.datatype]).extend(values)
        responses.append(response)
    return responses


def timeout_us(request: service_pb2.ModelInferRequest, budget_s: float) -> int:
    """Triton's per-request timeout for this request: the time left, or the caller's own value if smaller."""
    budget = max(1, int(budget_s * 1_000_000))
    given = request.parameters.get(TIMEOUT)
    return given.int64_param if given is not None and 0 < given.int64_param <= budget else budget
