"""The monitor's domain types: logged predictions, labels, and the joined rows quality is computed from. Plain
data; protobuf stays in `convert`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Task(IntEnum):
    """A route's task, numbered as meshserve.monitor.v1.Task."""

    UNSPECIFIED = 0
    BINARY = 1
    REGRESSION = 2


@dataclass(
    slots=True
)  # not frozen: tens of thousands a second, and a frozen __init__ costs several times more
class Record:
    """One answer of one variant (a shadow's under the primary's prediction id)."""

    prediction_id: str
    route: str
    variant: str
    model: str
    model_version: str
    tier: str
    time: float  # when it was answered, Unix seconds
    score: float
    shadow: bool
    task: int  # a Task value once validated
    threshold: float
    features: dict[str, float] | None = None  # only for the sampled share


@dataclass(frozen=True, slots=True)
class IncomingLabel:
    prediction_id: str
    value: float
    event_time: float  # 0: when received


@dataclass(frozen=True, slots=True)
class StoredLabel:
    value: float
    event_time: float  # as sent (0: not given)
    received: float
    pending: bool  # no logged prediction with its id yet

    @property
    def time(self) -> float:
        """When it happened: its event time, or when it was received where none was given."""
        return self.event_time or self.received


@dataclass(frozen=True, slots=True)
class Logged:
    """What the log knows about a prediction id: the route and task of its first record."""

    route: str
    task: int


@dataclass(frozen=True, slots=True, eq=False)  # arrays: == would be ambiguous
class Rows:
    """A route's logged predictions with their labels, column by column (label and label_time NaN where
    unlabelled)."""

    prediction_id: list[str]
    variant: list[str]
    model: list[str]
    model_version: list[str]
    shadow: np.ndarray  # bool
    task: np.ndarray  # int
    threshold: np.ndarray
    time: np.ndarray
    score: np.ndarray
    label: np.ndarray
    label_time: np.ndarray

    def __len__(self) -> int:
        return len(self.prediction_id)

    @classmethod
    def from_tuples(cls, rows: list[tuple]) -> Rows:
        """From (prediction_id, variant, model, model_version, shadow, task, threshold, time, score, label,
        label_time) tuples, label and label_time None where unlabelled."""
        if not rows:
            return cls.empty()
        ids, variants, models, versions, shadow, task, threshold, time, score, label, label_time = zip(
            *rows, strict=True
        )
        return cls(
            list(ids),
            list(variants),
            list(models),
            list(versions),
            np.array(shadow, dtype=bool),
            np.array(task, dtype=np.int64),
            np.array(threshold, dtype=np.float64),
            np.array(time, dtype=np.float64),
            np.array(score, dtype=np.float64),
            np.array(label, dtype=np.float64),  # None becomes NaN
            np.array(label_time, dtype=np.float64),
        )

    @classmethod
    def empty(cls) -> Rows:
        none = np.zeros(0)
        return cls([], [], [], [], none.astype(bool), none.astype(np.int64), none, none, none, none, none)


@dataclass(frozen=True, slots=True)
class ExportedRow:
    prediction_id: str
    variant: str
    model_version: str
    time: float
    score: float
    label: float | None
    features: dict[str, float]
    shadow: bool
    model: str
