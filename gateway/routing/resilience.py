"""Retry budget and outlier ejection, kept pure (the clock is injected) so their behaviour is unit-testable.

Both keep fixed-size state: counts in time buckets, one record per variant, whatever the request rate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshserve.core.errors import ErrorCode, MeshError

# Codes that mean "this tier could not answer, another might": never a verdict on the input itself.
TRY_ELSEWHERE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED, ErrorCode.RESOURCE_EXHAUSTED})


# Codes that can mean the variant itself is unwell: its model, or the Triton serving it, failed or is gone.
_VARIANT_FAILURE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})
# Hops whose failures are the variant's own: what serves its model. A feature or cache outage is not.
_VARIANT_HOPS = frozenset({None, "inference service", "triton"})


def try_elsewhere(exc: BaseException) -> bool:
    return isinstance(exc, MeshError) and exc.code in TRY_ELSEWHERE


def variant_failed(exc: BaseException) -> bool:
    """Whether `exc` counts against the variant that was tried: its model or Triton failed. Never a caller's
    deadline or cancellation, overload (RESOURCE_EXHAUSTED), bad input, or another dependency's outage."""
    return isinstance(exc, MeshError) and exc.code in _VARIANT_FAILURE and exc.origin in _VARIANT_HOPS


class RetryBudget:
    """Allows a retry only while retries stay under `ratio` of the requests seen in the last `window_s` seconds
    (plus `min_retries` to let a quiet route retry at all), so retries cannot multiply an outage. Requests and
    retries are counted in one-second buckets: memory is fixed whatever the rate."""

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
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries], oldest first

    def _bucket(self) -> list[int]:
        second = int(self.clock())
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    @property
    def buckets(self) -> int:
        """Buckets held: at most `window_s` + 1, whatever the rate."""
        return len(self._buckets)

    def record_request(self) -> None:
        self._bucket()[1] += 1

    def try_acquire(self) -> bool:
        current = self._bucket()
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        if retries + 1 <= self.min_retries + self.ratio * requests:
            current[2] += 1
            return True
        return False


@dataclass
class _Health:
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    probing: bool = False


class OutlierEjection:
    """Ejects a variant after `failures` consecutive failures of its own for `base_s` seconds, doubling with each
    ejection in a row (up to `max_s`). When the period ends one probe request goes through: success restores the
    variant at once, failure ejects it again for longer.

    Like Envoy's `max_ejection_percent`, at most `max_ejected_share` of a group's members (a route's variants)
    are ejected at once, and always at least one may be. The dispatcher adds the panic mode: when every tier of a
    request is ejected, it tries them all anyway."""

    def __init__(
        self,
        failures: int = 5,
        base_s: float = 1.0,
        max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_ejected_share: float = 0.5,
    ) -> None:
        self.failures = failures
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.max_ejected_share = max_ejected_share
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
        """Whether `key` is ejected (its period may have run out, waiting for a probe). Pure."""
        health = self._state.get(key)
        return health is not None and health.ejected_until != 0.0

    def blocked(self, key: str) -> bool:
        """Whether a request to `key` would be refused now (ejected, and not free to be probed). Pure."""
        health = self._state.get(key)
        if health is None or health.ejected_until == 0.0:
            return False
        return self.clock() < health.ejected_until or health.probing

    def record(self, key: str, ok: bool, group: Sequence[str] = ()) -> None:
        """An outcome of `key`'s own; `group` are the keys it may not all be ejected with (itself included)."""
        if ok:
            if key in self._state:
                del self._state[key]  # healthy again: no state is the healthy state
            return
        health = self._state.setdefault(key, _Health())
        health.consecutive_failures += 1
        if not (health.probing or health.consecutive_failures >= self.failures):
            return
        already = sum(self.ejected(k) for k in group if k != key)
        if group and not health.probing and already + 1 > max(1, int(self.max_ejected_share * len(group))):
            return  # ejecting it too would eject more of the group than allowed: it keeps taking traffic
        health.ejections += 1
        health.ejected_until = self.clock() + min(self.base_s * 2 ** (health.ejections - 1), self.max_s)
        health.probing = False
        health.consecutive_failures = 0
