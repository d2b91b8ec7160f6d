"""Per-variant outcomes over a sliding window: error rate and p99 for canary analysis, totals for the admin API.

Memory does not depend on the request rate: each (route, variant) keeps one bucket per `bucket_s` of the window
(requests, errors and a latency histogram with at most `LATENCY_BINS` bins), and a write drops the buckets that
have left the window. Reads never change anything.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshserve.core.metrics import LATENCY_BUCKETS

# Latency histogram: bin i holds latencies in (FLOOR_S * RATIO**(i-1), FLOOR_S * RATIO**i]; bin 0 everything up to
# FLOOR_S, the last bin everything from CEILING_S up.
FLOOR_S = 0.0001
CEILING_S = 120.0
RATIO = 1.1
LATENCY_BINS = math.ceil(math.log(CEILING_S / FLOOR_S) / math.log(RATIO)) + 1
_LOG_RATIO = math.log(RATIO)


def latency_bin(latency_s: float) -> int:
    if latency_s <= FLOOR_S:
        return 0
    return min(LATENCY_BINS - 1, math.ceil(math.log(latency_s / FLOOR_S) / _LOG_RATIO - 1e-9))


def bin_upper_edge(index: int) -> float:
    return FLOOR_S * RATIO**index


@dataclass(frozen=True, slots=True)
class WindowSummary:
    requests: int
    errors: int
    p99_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(slots=True)
class LatencyTotals:
    """Latencies of one (route, variant) since start, in Prometheus' buckets (`LATENCY_BUCKETS`, then +Inf): what
    `meshserve_gateway_route_request_duration_seconds` exports. Counts per bucket, not cumulative (cheaper to
    record); `cumulative()` gives the exposition's form."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    sum_s: float = 0.0

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, observations <= le)], ending with +Inf: from a copy, so a concurrent `record` cannot make the
        +Inf bucket disagree with the others."""
        out, seen = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), list(self.counts), strict=True):
            seen += count
            out.append(("+Inf" if bound == math.inf else repr(bound), seen))
        return out


@dataclass(slots=True)
class _Bucket:
    index: int  # start time // bucket_s
    requests: int = 0
    errors: int = 0
    latencies: dict[int, int] = field(default_factory=dict)  # histogram bin -> count; only bins that were hit


class VariantStats:
    """Outcomes per (route, variant) in the last `window_s`, at the resolution of `bucket_s`.

    Approximations, both bounded:
    - time: `summary()` counts whole buckets, so an outcome up to one `bucket_s` older than the window start (or
      than `since`) may still count;
    - p99: reported as the upper edge of the histogram bin holding the exact p99 (the same rank as a sorted list
      would give), so it is never below the exact value and at most `RATIO - 1` (10 %) above it, for latencies
      between `FLOOR_S` (0.1 ms) and `CEILING_S`; anything faster reads as 0.1 ms, anything slower as the ceiling.
    """

    def __init__(
        self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic, bucket_s: float = 1.0
    ) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.clock = clock
        self._buckets: dict[tuple[str, str], deque[_Bucket]] = {}
        self.totals: dict[
            tuple[str, str], list[int]
        ] = {}  # (route, variant) -> [requests, errors], since start
        self.latency_totals: dict[tuple[str, str], LatencyTotals] = {}  # the same outcomes' latencies

    def record(self, route: str, variant: str, ok: bool, latency_s: float) -> None:
        key = (route, variant)
        now = self.clock()
        index = math.floor(now / self.bucket_s)
        buckets = self._buckets.get(key)
        if buckets is None:
            buckets = self._buckets[key] = deque()
        if not buckets or buckets[-1].index < index:
            buckets.append(_Bucket(index))
        # A clock that stepped back lands in the newest bucket, so buckets stay in time order.
        bucket = buckets[-1]
        bucket.requests += 1
        bucket.errors += not ok
        latency = latency_bin(latency_s)
        bucket.latencies[latency] = bucket.latencies.get(latency, 0) + 1
        oldest = self._oldest_index(now - self.window_s)
        while buckets[0].index < oldest:
            buckets.popleft()
        totals = self.totals.get(key)
        if totals is None:
            totals = self.totals[key] = [0, 0]
        totals[0] += 1
        totals[1] += not ok
        latencies = self.latency_totals.get(key)
        if latencies is None:
            latencies = self.latency_totals[key] = LatencyTotals()
        latencies.counts[bisect_left(LATENCY_BUCKETS, latency_s)] += 1  # le: a latency on a bound is in it
        latencies.sum_s += latency_s

    def _oldest_index(self, start: float) -> int:
        """The first bucket that overlaps [start, now]."""
        return math.floor(start / self.bucket_s)

    def summary(
        self, route: str, variant: str, since: float | None = None, extra: Iterable[ExportedBucket] = ()
    ) -> WindowSummary:
        """Outcomes in the window (or since `since`, if later), to the bucket; with `extra` (other gateways'
        buckets of this route and variant, their starts on this clock) merged in by adding counts."""
        start = self.clock() - self.window_s
        if since is not None:
            start = max(start, since)
        oldest = self._oldest_index(start)
        requests = errors = 0
        histogram: dict[int, int] = {}
        for bucket in self._buckets.get((route, variant), ()):
            if bucket.index < oldest:
                continue
            requests += bucket.requests
            errors += bucket.errors
            for latency, count in bucket.latencies.items():
                histogram[latency] = histogram.get(latency, 0) + count
        for bucket_start, bucket_requests, bucket_errors, latencies in extra:
            # the same test as for our own buckets: index >= floor(start / bucket_s), i.e. it overlaps [start, now]
            if bucket_start + self.bucket_s <= start:
                continue
            requests += bucket_requests
            errors += bucket_errors
            for latency, count in latencies.items():
                histogram[int(latency)] = histogram.get(int(latency), 0) + count
        return WindowSummary(requests, errors, _p99(histogram, requests))

    def export(self, offset: float = 0.0, routes: Iterable[str] | None = None) -> list[dict]:
        """The buckets in the window, JSON-ready, for other gateways to merge: per (route, variant), rows of
        [start, requests, errors, {bin: count}], starts moved onto another clock by `offset` (theirs - ours).
        Only `routes`, if given. A copy: reading it never changes anything, and `record` keeps going while it is sent."""
        oldest = self._oldest_index(self.clock() - self.window_s)
        wanted = None if routes is None else set(routes)
        out = []
        for (route, variant), buckets in list(self._buckets.items()):
            if wanted is not None and route not in wanted:
                continue
            rows = [
                [
                    b.index * self.bucket_s + offset,
                    b.requests,
                    b.errors,
                    {str(k): v for k, v in b.latencies.items()},
                ]
                for b in list(buckets)
                if b.index >= oldest
            ]
            if rows:
                out.append({"route": route, "variant": variant, "buckets": rows})
        return out

    def forget(self, route: str, variant: str) -> None:
        """Start the window afresh (a new rollout step); totals are kept."""
        self._buckets.pop((route, variant), None)

    def held_buckets(self) -> int:
        """Buckets held over all variants: what memory is proportional to."""
        return sum(len(buckets) for buckets in self._buckets.values())


# One exported bucket: (start, requests, errors, {histogram bin: count}); bins are strings once through JSON.
ExportedBucket = tuple[float, int, int, dict]


def exported_buckets(
    exports: Iterable[list[dict]], route: str, variant: str, offset: float = 0.0
) -> list[list]:
    """Every export's buckets of (route, variant), their starts moved by `offset` (ours - theirs): what
    `summary(extra=...)` merges. Pure."""
    out = []
    for export in exports:
        for entry in export:
            if entry["route"] == route and entry["variant"] == variant:
                out.extend([start + offset, r, e, h] for start, r, e, h in entry["buckets"])
    return out


def _p99(histogram: dict[int, int], requests: int) -> float:
    if not requests:
        return 0.0
    rank = min(requests - 1, int(0.99 * requests))  # 0-based, as `sorted(latencies)[rank]` would pick
    seen = 0
    for latency in sorted(histogram):
        seen += histogram[latency]
        if seen > rank:
            return bin_upper_edge(latency)
    return bin_upper_edge(max(histogram))
