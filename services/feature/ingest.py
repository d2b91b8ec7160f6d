"""Validation of incoming feature rows against the registry: every bad row is reported with its line and
reason, and a batch with any bad row is refused whole. Pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshserve.core.errors import InvalidArgument
from meshserve.feature.registry import FeatureRegistry
from services.feature.store import Row

MAX_REPORTED = 20  # bad rows named in one error; the rest are counted


@dataclass(frozen=True, slots=True)
class IncomingRow:
    line: int
    entity_key: str
    values: Mapping[str, float | int | str]
    event_ts: float | None  # None: the time of ingestion


class InvalidRows(InvalidArgument):
    def __init__(self, problems: list[str], total: int) -> None:
        more = f" (and {total - len(problems)} more)" if total > len(problems) else ""
        super().__init__(f"{total} bad row(s), nothing written: " + "; ".join(problems) + more)
        self.problems = problems


def _number(raw: float | int | str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def validate_rows(
    registry: FeatureRegistry, entity: str, rows: Sequence[IncomingRow], now: float
) -> list[Row]:
    """Rows as store writes (entity_key, feature, value, event_ts), or InvalidRows naming every bad line."""
    if entity not in registry.entities:
        raise InvalidArgument(f"unknown entity {entity!r}; known: {', '.join(sorted(registry.entities))}")
    stored = set(registry.stored_by_entity[entity])
    problems: list[str] = []
    bad = 0
    writes = []
    for row in rows:
        reasons = []
        if not row.entity_key:
            reasons.append(f"{registry.entities[entity].join_key} is missing")
        if not row.values:
            reasons.append("no feature values")
        for name, raw in row.values.items():
            if name not in stored:
                reasons.append(f"{name!r} is not a stored feature of {entity!r}")
                continue
            spec = registry.features[name]
            try:
                value = _number(raw)
            except (TypeError, ValueError):
                reasons.append(f"{name}={raw!r} is not a number")
                continue
            if spec.dtype.startswith("INT") and not value.is_integer():
                reasons.append(f"{name}={raw!r} is not an integer")
            elif spec.out_of_range(value):
                reasons.append(f"{name}={raw!r} is outside its range: must be {spec.allowed_range}")
            else:
                writes.append(
                    (row.entity_key, name, value, row.event_ts if row.event_ts is not None else now)
                )
        if reasons:
            bad += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"line {row.line}: {', '.join(reasons)}")
    if bad:
        raise InvalidRows(problems, bad)
    return writes
