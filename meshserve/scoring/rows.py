"""Row validation: one input row (a CSV line or a Parquet row) becomes a ValidRow or a Reject with a reason.

The checks mirror the gateway's own (`gateway/serving/predict.py`), so one bad row is rejected alone instead of failing
the whole Predict it would have travelled in."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice

from meshserve.core.prediction_ids import id_problem
from meshserve.feature.registry import FeatureRegistry, allowed_range

__all__ = ["PREDICTION_ID_COLUMN", "FeatureSpec", "RawRow", "Reject", "RowSchema", "ValidRow", "chunks"]

# An optional input column: the caller's own id for each row's prediction (a transaction id, say), sent as
# Instance.prediction_id so that labels can later name it; without it the gateway makes one. Either way the output
# says it.
PREDICTION_ID_COLUMN = "prediction_id"


@dataclass(frozen=True)
class RawRow:
    line: int  # CSV: the file's line number (the header is line 1); Parquet: the row number from 1
    values: Mapping[str, object]  # column -> value as read (str from CSV, Python values from Parquet)
    extra_fields: int = 0  # CSV fields beyond the header's columns


@dataclass(frozen=True)
class ValidRow:
    line: int
    entity_key: str
    features: dict[str, int | float]  # int for integral features, float otherwise
    prediction_id: str = ""  # the row's own (PREDICTION_ID_COLUMN); empty: the gateway makes one


@dataclass(frozen=True)
class Reject:
    line: int
    entity_key: str
    reason: str


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    integral: bool
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class RowSchema:
    key_column: str
    features: tuple[FeatureSpec, ...]

    @classmethod
    def for_model(cls, registry: FeatureRegistry, model: str, key_column: str | None = None) -> RowSchema:
        """The request-time features of `model` in the registry, keyed by its entity's join key by default."""
        if model not in registry.models:
            raise KeyError(f"the feature registry does not describe model {model!r}")
        spec = registry.models[model]
        key = key_column or registry.entities[spec.entity].join_key
        features = tuple(
            FeatureSpec(
                name,
                registry.features[name].integral,
                registry.features[name].min,
                registry.features[name].max,
            )
            for name in registry.request_features(model)
        )
        return cls(key, features)

    @property
    def columns(self) -> list[str]:
        return [self.key_column, *(f.name for f in self.features)]

    def missing_columns(self, columns: Sequence[str]) -> str | None:
        """Why a file with these columns cannot be scored at all, or None: every row of it would be rejected for
        the same reason, so it is refused before any row is read."""
        have = ", ".join(columns) if columns else "none"
        if self.key_column not in columns:
            return f"has no column {self.key_column!r} (the route's entity key); its columns are: {have}"
        missing = [f.name for f in self.features if f.name not in columns]
        if missing:
            named = ", ".join(repr(name) for name in missing)
            what = "a request feature" if len(missing) == 1 else "request features"
            return (
                f"has no column{'s' if len(missing) > 1 else ''} {named} ({what} the route takes); "
                f"its columns are: {have}"
            )
        return None

    def validate(self, row: RawRow) -> ValidRow | Reject:
        key = _text(row.values.get(self.key_column))
        if not key:
            return Reject(row.line, "", f"missing entity key (column {self.key_column!r})")
        if row.extra_fields:
            return Reject(
                row.line, key, f"{row.extra_fields} field(s) beyond the header's {len(row.values)} columns"
            )
        known = {*self.columns, PREDICTION_ID_COLUMN}
        unknown = [c for c in row.values if c not in known and _text(row.values[c])]
        if unknown:
            return Reject(
                row.line,
                key,
                f"unknown column {unknown[0]!r}; expected {self.columns} (and optionally {PREDICTION_ID_COLUMN!r})",
            )
        prediction_id = _text(row.values.get(PREDICTION_ID_COLUMN))
        problem = prediction_id_problem(prediction_id)
        if problem:
            return Reject(row.line, key, problem)
        features: dict[str, int | float] = {}
        for spec in self.features:
            value = parse_feature(spec, row.values.get(spec.name))
            if isinstance(value, str):
                return Reject(row.line, key, value)
            features[spec.name] = value
        return ValidRow(row.line, key, features, prediction_id)


def prediction_id_problem(prediction_id: str) -> str | None:
    """Why the gateway would refuse this id (INVALID_ARGUMENT), or None; an empty one asks the gateway for one."""
    problem = id_problem(prediction_id) if prediction_id else None
    return f"{PREDICTION_ID_COLUMN} {problem}" if problem else None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def parse_feature(spec: FeatureSpec, raw: object) -> int | float | str:
    """The feature's value, or (a str) the reason it is refused."""
    name = spec.name
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return f"missing feature {name!r}"
    if isinstance(raw, bool):
        return f"feature {name!r} must be a number, got a boolean"
    value: float
    if isinstance(raw, int | float):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return f"feature {name!r}: cannot parse {raw!r} as a number"
    else:
        return f"feature {name!r} must be a number, got {type(raw).__name__}"
    if not math.isfinite(value):
        return f"feature {name!r} must be finite, got {value}"
    if spec.integral:
        if value != int(value):
            return f"feature {name!r} is an integer, got {raw}"
        value = int(value)
    else:
        value = float(value)
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        return f"feature {name!r}={value} is outside its range: must be {allowed_range(spec.min, spec.max)}"
    return value


def chunks(rows: Iterable[RawRow], size: int) -> Iterator[tuple[int, list[RawRow]]]:
    """Consecutive chunks of `size` input rows (good and bad alike), numbered from 0: the same file and size
    always give the same chunks, which is what lets a rerun skip the ones already done."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    it = iter(rows)
    index = 0
    while chunk := list(islice(it, size)):
        yield index, chunk
        index += 1
