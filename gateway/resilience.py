"""Retry budget and outlier ejection, kept pure (the clock is injected) so their behaviour is unit-testable."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from meshserve.core.errors import ErrorCode, MeshError

# Codes that mean "this tier could not answer, another might": never a verdict on the input itself.
TRY_ELSEWHERE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED})


def try_elsewhere(exc: BaseException) -> bool:
    return isinstance(exc, MeshError) and exc.code in TRY_ELSEWHERE


class RetryBudget:
    """Allows a retry only while retries stay under `ratio` of the requests seen in the last `window_s` seconds
    (plus `min_retries` to let a quiet route retry at all), so retries cannot multiply an outage."""

    def __init__(
        self,
        ratio: float,
        window_s: float = 10.0,
        min_retries: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self.min_retries = min_retries
        self.clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _trim(self, now: float) -> None:
        for events in (self._requests, self._retries):
            while events and events[0] <= now - self.window_s:
                events.popleft()

    def record_request(self) -> None:
        self._requests.append(self.clock())

    def try_acquire(self) -> bool:
        now = self.clock()
        self._trim(now)
        if len(self._retries) + 1 <= self.min_retries + self.ratio * len(self._requests):
            self._retries.append(now)
            return True
        return False


@dataclass
class _Health:
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False


class OutlierEjection:
    """Ejects a variant after `failures` consecutive failures for `base_s` seconds, doubling with each ejection
    in a row (up to `max_s`). When the period ends one probe request goes through: success restores the
    variant, failure ejects it again for longer."""

    def __init__(
        self,
        failures: int = 5,
        base_s: float = 1.0,
        max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self._state: dict[str, _Health] = {}

    def available(self, key: str) -> bool:
        """Whether a request may go to `key` now; admits exactly one probe once an ejection has run out."""
        health = self._state.get(key)
        if health is None or health.ejected_until == 0.0:
            return True
        if self.clock() < health.ejected_until or health.probing:
            return False
        health.probing = True
        return True

    def ejected(self, key: str) -> bool:
        health = self._state.get(key)
        return health is not None and health.ejected_until != 0.0

    def record(self, key: str, ok: bool) -> None:
        if ok:
            if key in self._state:
                del self._state[key]  # healthy again: no state is the healthy state
            return
        health = self._state.setdefault(key, _Health())
        health.consecutive_failures += 1
        if health.probing or health.consecutive_failures >= self.failures:
            health.ejections += 1
            health.ejected_until = self.clock() + min(self.base_s * 2 ** (health.ejections - 1), self.max_s)
            health.probing = False
            health.consecutive_failures = 0
