"""Per-variant outcomes over a sliding window: error rate and p99 for canary analysis, totals for the admin API."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowSummary:
    requests: int
    errors: int
    p99_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class VariantStats:
    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: dict[tuple[str, str], deque[tuple[float, bool, float]]] = {}
        self.totals: dict[tuple[str, str], list[int]] = {}  # (route, variant) -> [requests, errors]

    def record(self, route: str, variant: str, ok: bool, latency_s: float) -> None:
        key = (route, variant)
        self._events.setdefault(key, deque()).append((self.clock(), ok, latency_s))
        totals = self.totals.setdefault(key, [0, 0])
        totals[0] += 1
        totals[1] += not ok

    def summary(self, route: str, variant: str, since: float | None = None) -> WindowSummary:
        """Outcomes in the window (or since `since`, if later)."""
        events = self._events.get((route, variant), deque())
        horizon = self.clock() - self.window_s
        while events and events[0][0] < horizon:
            events.popleft()
        start = max(horizon, since or horizon)
        chosen = [(ok, latency) for stamp, ok, latency in events if stamp >= start]
        latencies = sorted(latency for _, latency in chosen)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
        return WindowSummary(len(chosen), sum(not ok for ok, _ in chosen), p99)

    def forget(self, route: str, variant: str) -> None:
        self._events.pop((route, variant), None)
