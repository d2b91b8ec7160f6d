"""What the monitor accepts: records (a bad one refuses its whole batch, naming the field and its index: the
gateway that wrote it has a bug) and labels (a bad one is refused alone, with the reason; the rest of the batch
is kept: labels come from people and files)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from meshserve.core.errors import InvalidArgument
from meshserve.core.prediction_ids import MAX_PREDICTION_ID_LENGTH, id_problem
from services.monitor.records import IncomingLabel, Record, Task


def score_problem(score: float, task: int) -> str | None:
    if not math.isfinite(score):
        return f"{score} is not a finite number"
    if task == Task.BINARY and not 0.0 <= score <= 1.0:
        return f"{score} is not a probability (a binary route's score lies in [0, 1])"
    return None


def _unprintable(r: Record) -> str | None:
    for name in ("route", "variant", "model", "model_version", "tier"):
        if not getattr(r, name).isprintable():
            return name
    return None


def record_problem(r: Record) -> str | None:
    """What is wrong with a record, naming the field, or None."""
    if (why := id_problem(r.prediction_id)) is not None:
        return f"prediction_id {why}"
    if not r.route:
        return "route is empty"
    if not r.variant:
        return "variant is empty"
    if (name := _unprintable(r)) is not None:
        return f"{name} holds control characters"
    if r.task not in (Task.BINARY, Task.REGRESSION):
        return f"task {r.task} is neither BINARY nor REGRESSION"
    if not (math.isfinite(r.time) and r.time >= 0):
        return f"time {r.time} is not a time (Unix seconds, 0: now)"
    if (why := score_problem(r.score, r.task)) is not None:
        return f"score {why}"
    if r.task == Task.BINARY and not math.isfinite(r.threshold):
        return f"threshold {r.threshold} is not a finite number"
    return None


def validate_records(records: Sequence[Record]) -> None:
    """Raise InvalidArgument naming the first bad field and its record's index. Every record of every batch
    passes here, so the common case is one expression; the message is worked out only for a bad one."""
    binary, regression, isfinite = Task.BINARY, Task.REGRESSION, math.isfinite
    for index, r in enumerate(records):
        pid = r.prediction_id
        if (
            0 < len(pid) <= MAX_PREDICTION_ID_LENGTH
            and pid.isascii()
            and pid.isprintable()
            and r.route
            and r.variant
            and (r.route + r.variant + r.model + r.model_version + r.tier).isprintable()
            and r.time >= 0
            and isfinite(r.time)
            and (
                (r.task == binary and 0.0 <= r.score <= 1.0 and isfinite(r.threshold))
                or (r.task == regression and isfinite(r.score))
            )
        ):
            continue
        raise InvalidArgument(f"records[{index}]: {record_problem(r)}")


def label_problem(label: IncomingLabel) -> str | None:
    """Why a label cannot be taken whatever its route, or None."""
    if (why := id_problem(label.prediction_id)) is not None:
        return f"prediction_id {why}"
    if not math.isfinite(label.value):
        return f"label {label.value} is not a finite number"
    if not math.isfinite(label.event_time) or label.event_time < 0:
        return f"event_time {label.event_time} is not a time (Unix seconds, 0: when received)"
    return None


def fit_problem(value: float, task: int, route: str) -> str | None:
    """Why a label does not fit its route's task, or None."""
    if task == Task.BINARY and value not in (0.0, 1.0):
        return f"label {value:g} does not fit route {route} (binary: 0 or 1)"
    return None
