"""Answers as prediction log records (`meshserve.monitor.v1.PredictionRecord`), one per row, for routes whose
`quality` block is on. Pure: numpy and protobuf, no I/O.

Predict's answers carry their score; a ModelInfer answer's score is read from its raw output bytes: column
`quality.index` of output `quality.output`, per row. For the sampled share of predictions (a hash of the id, so
the same in every gateway) the record also holds what the model saw: Predict's full input vector by the
registry's feature names; ModelInfer's input rows, by those names where the registry describes the model's input,
else as `<input>[j]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from tritonclient.grpc import service_pb2

from gateway.routing.dispatch import Tier
from gateway.routing.routes import Quality, QualityTask
from gateway.serving.tensors import CONTENTS_FIELD, in_shared_memory
from meshserve.core.prediction_ids import row_id, sampled
from meshserve.monitor.v1 import monitor_pb2

__all__ = ["TASKS", "AnswerSource", "infer_records", "tier_name"]

TASKS = {QualityTask.BINARY: monitor_pb2.BINARY, QualityTask.REGRESSION: monitor_pb2.REGRESSION}
_TIERS = {Tier.PRIMARY: "model", Tier.FALLBACK: "fallback", Tier.DEFAULT: "default"}
NUMERIC = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip


def tier_name(tier: Tier, from_cache: bool = False) -> str:
    """The log's tier: "cache" (the prediction cache answered), "model", "fallback" or "default"."""
    return "cache" if from_cache else _TIERS[tier]


def features_of(names: Sequence[str], row: np.ndarray) -> dict[str, float]:
    return dict(zip(names, row.tolist(), strict=True))


class AnswerSource:
    """What every record of one route's answers shares: the route, its quality block and the time answered."""

    __slots__ = ("route", "quality", "task", "time")

    def __init__(self, route: str, quality: Quality, time: float) -> None:
        self.route = route
        self.quality = quality
        self.task = TASKS[quality.task]
        self.time = time

    def record(
        self,
        prediction_id: str,
        variant: str,
        model: str,
        version: str,
        tier: str,
        score: float,
        *,
        shadow: bool = False,
        features: Mapping[str, float] | None = None,
    ) -> monitor_pb2.PredictionRecord:
        return monitor_pb2.PredictionRecord(
            prediction_id=prediction_id, route=self.route, variant=variant, model=model, model_version=version,
            tier=tier, time=self.time, score=score, shadow=shadow, task=self.task,
            threshold=self.quality.threshold, features=features,
        )  # fmt: skip

    def wants_features(self, prediction_id: str) -> bool:
        return sampled(prediction_id, self.quality.sample_features)


def _tensor_array(datatype: str, raw: bytes | None, contents, what: str) -> np.ndarray:
    """A numeric tensor's values, flat: from its raw bytes, else its typed contents."""
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise ValueError(f"{what} is {datatype}, not a number")
    if raw is not None:
        return np.frombuffer(raw, dtype=dtype)
    return np.asarray(getattr(contents, CONTENTS_FIELD[datatype]), dtype=dtype)


def output_scores(reply: service_pb2.ModelInferResponse, quality: Quality, rows: int) -> np.ndarray:
    """Each row's score: column `quality.index` of output `quality.output`. ValueError naming what is missing."""
    for n, tensor in enumerate(reply.outputs):
        if tensor.name == quality.output:
            raw = reply.raw_output_contents[n] if n < len(reply.raw_output_contents) else None
            values = _tensor_array(tensor.datatype, raw, tensor.contents, f"output {quality.output!r}")
            if rows == 0 or values.size % rows:
                raise ValueError(f"output {quality.output!r} holds {values.size} values for {rows} rows")
            table = values.reshape(rows, -1)
            if quality.index >= table.shape[1]:
                raise ValueError(
                    f"output {quality.output!r} has {table.shape[1]} columns; the route's quality index is "
                    f"{quality.index}"
                )
            return table[:, quality.index].astype(np.float64)
    raise ValueError(
        f"the answer has no output {quality.output!r} (the route's quality.output); outputs: "
        f"{[t.name for t in reply.outputs]}"
    )


def input_rows(
    request: service_pb2.ModelInferRequest, rows: int, named: Mapping[str, Sequence[str]]
) -> list[dict[str, float]] | None:
    """Each row's inputs by name (`named`: an input's feature names, where the registry describes it; else
    `<input>[j]`); None when they cannot be read here (data in shared memory, or not numbers)."""
    raw = request.raw_input_contents
    columns: list[tuple[list[str], np.ndarray]] = []
    for n, tensor in enumerate(request.inputs):
        if in_shared_memory(tensor) or tensor.datatype not in NUMERIC:
            return None
        values = _tensor_array(tensor.datatype, raw[n] if raw else None, tensor.contents, tensor.name)
        if values.size % rows:
            return None
        table = values.reshape(rows, -1)
        names = named.get(tensor.name)
        if names is None or len(names) != table.shape[1]:
            names = [f"{tensor.name}[{j}]" for j in range(table.shape[1])]
        columns.append((list(names), table.astype(np.float64)))
    return [{name: value for names, table in columns for name, value in zip(names, table[row].tolist(),
             strict=True)} for row in range(rows)]  # fmt: skip


def infer_records(
    source: AnswerSource,
    base_id: str,
    variant: str,
    model: str,
    version: str,
    tier: Tier,
    request: service_pb2.ModelInferRequest,
    reply: service_pb2.ModelInferResponse,
    batched: bool,
    named: Mapping[str, Sequence[str]],
) -> Iterator[monitor_pb2.PredictionRecord]:
    """One record per row of a ModelInfer answer (rows: the batch dimension where the model batches, else one)."""
    shape = next((t.shape for t in reply.outputs if t.name == source.quality.output), None)
    rows = shape[0] if batched and shape else 1
    scores = output_scores(reply, source.quality, rows)
    ids = [row_id(base_id, row, rows) for row in range(rows)]
    wanted = [source.wants_features(i) for i in ids]
    inputs = input_rows(request, rows, named) if any(wanted) else None
    tier_label = tier_name(tier)
    for row, prediction_id in enumerate(ids):
        features = inputs[row] if inputs is not None and wanted[row] else None
        yield source.record(prediction_id, variant, model, version, tier_label, float(scores[row]),
                            features=features)  # fmt: skip
