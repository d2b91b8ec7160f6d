"""Labels, pure: what a batch of labels does given what is already stored. Idempotent by prediction id: the first
label stands and a repeat is counted, unless the batch says to correct (then it replaces the earlier one). A label
whose id is not logged yet waits (pending) for its record; one that does not fit its route's task is refused
alone, with the reason.

Counts are kept per route where the route is known (a label joined to a route's record), else under NO_ROUTE (a
pending label's repeats, malformed labels, labels that never found their record)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.monitor.records import IncomingLabel, Logged, StoredLabel
from services.monitor.validation import fit_problem, label_problem

NO_ROUTE = ""
OUTCOMES = ("accepted", "duplicates", "corrected", "pending", "unknown", "refused")


@dataclass(frozen=True, slots=True)
class Refusal:
    index: int  # the label's position in its request
    prediction_id: str
    reason: str


@dataclass(slots=True)
class FeedbackResult:
    accepted: int = 0  # stored: joined now, or pending its prediction
    duplicates: int = 0
    corrected: int = 0
    pending: int = 0  # of the accepted
    refused: list[Refusal] = field(default_factory=list)


@dataclass(slots=True)
class FeedbackPlan:
    writes: dict[str, StoredLabel]  # prediction id -> the label to store (new or replacing)
    result: FeedbackResult
    counts: Counter[tuple[str, str]]  # (route, outcome) -> how many, for the stored counts


def plan_feedback(
    labels: Sequence[IncomingLabel],
    correct: bool,
    stored: Mapping[str, StoredLabel],
    logged: Mapping[str, Logged],
    now: float,
) -> FeedbackPlan:
    """The writes and counts of one batch; `stored` and `logged` hold what the store has for its ids."""
    result = FeedbackResult()
    writes: dict[str, StoredLabel] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for index, label in enumerate(labels):
        pid = label.prediction_id
        reason = label_problem(label)
        record = logged.get(pid) if reason is None else None
        route = record.route if record is not None else NO_ROUTE
        if record is not None:
            reason = fit_problem(label.value, record.task, route)
        if reason is not None:
            result.refused.append(Refusal(index, pid, reason))
            counts[route, "refused"] += 1
            continue
        earlier = writes.get(pid) or stored.get(pid)
        pending = record is None
        if earlier is not None and not correct:
            result.duplicates += 1
            counts[route, "duplicates"] += 1
            continue
        writes[pid] = StoredLabel(label.value, label.event_time, now, pending)
        if earlier is not None:
            result.corrected += 1
            counts[route, "corrected"] += 1
            continue
        result.accepted += 1
        if pending:
            result.pending += 1  # counted accepted on its route once its record arrives
        else:
            counts[route, "accepted"] += 1
    return FeedbackPlan(writes, result, counts)


@dataclass(slots=True)
class Resolution:
    """What becomes of pending labels whose records arrived."""

    joined: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)


def resolve_pending(waiting: Mapping[str, StoredLabel], arrived: Mapping[str, Logged]) -> Resolution:
    """Each pending label joins its record if it fits the record's task, else it is refused then."""
    out = Resolution()
    for pid, label in waiting.items():
        record = arrived[pid]
        if fit_problem(label.value, record.task, record.route) is None:
            out.joined.append(pid)
            out.counts[record.route, "accepted"] += 1
        else:
            out.refused.append(pid)
            out.counts[record.route, "refused"] += 1
    return out
