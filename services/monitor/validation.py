"""What the monitor accepts: records (a bad one refuses its whole batch, naming the field and its index: the
gateway that wrote it has a bug) and labels (a bad one is refused alone, with the reason; the rest of the batch
is kept: labels come from people and files)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from meshserve.core.errors import InvalidArgument
from services.monitor.records import IncomingLabel, Record, Task

MAX_ID_CHARS = 128  # as the gateway's own check of a caller's prediction id


def id_problem(prediction_id: str) -> str | None:
    if not prediction_id:
        return "is empty"
    if len(prediction_id) > MAX_ID_CHARS:
        return f"is longer than {MAX_ID_CHARS} characters"
    if not (prediction_id.isascii() and prediction_id.isprintable()):
        return "holds characters other than printable ASCII"
    return None


def score_problem(score: float, task: int) -> str | None:
    if not math.isfinite(score):
        return f"{score} is not a finite number"
    if task == Task.BINARY and not 0.0 <= score <= 1.0:
        return f"{score} is not a probability (a binary route's score lies in [0, 1])"
    return None


def validate_records(records: Sequence[Record]) -> None:
    """Raise InvalidArgument naming the first bad field and its record's index."""
    for index, r in enumerate(records):
        problem = None
        if (why := id_problem(r.prediction_id)) is not None:
            problem = f"prediction_id {why}"
        elif not r.route:
            problem = "route is empty"
        elif not r.route.isprintable():
            problem = "route holds control characters"
        elif not r.variant:
            problem = "variant is empty"
        elif r.task not in (Task.BINARY, Task.REGRESSION):
            problem = f"task {r.task} is neither BINARY nor REGRESSION"
        elif not (math.isfinite(r.time) and r.time >= 0):
            problem = f"time {r.time} is not a time (Unix seconds, 0: now)"
        elif (why := score_problem(r.score, r.task)) is not None:
            problem = f"score {why}"
        elif r.task == Task.BINARY and not math.isfinite(r.threshold):
            problem = f"threshold {r.threshold} is not a finite number"
        if problem is not None:
            raise InvalidArgument(f"records[{index}]: {problem}")


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
