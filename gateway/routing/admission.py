"""Admission control: how much work the gateway takes on, adapting to the latency it observes. Pure; no gRPC.

Each route's ModelInfer and its Predict traffic (they take very different times) have a concurrency limit that
follows latency in the spirit of Netflix's gradient limiter: while recent latency stays within `tolerance` of its
long-run level the limit may grow (by about its square root per adjustment), and when latency climbs — work is
queueing somewhere — it shrinks, by at most half per adjustment. The gateway as a whole has a fixed cap besides.
Work over a limit is refused at once, before anything is spent on it, with a hint of when to retry; so is work
whose deadline it would miss: RESOURCE_EXHAUSTED when work queued ahead of it is the reason (later it may fit;
time spent queueing counts `queue_weight` times over), DEADLINE_EXCEEDED when nothing is (it never would). Latency from batching itself does not shrink a limit:
only latency rising above its own recent level does.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from meshserve.core.errors import DeadlineExceeded, ErrorCode, MeshError, ResourceExhausted

__all__ = ["Admission", "AdmissionPolicy", "GradientLimit", "RETRY_PUSHBACK_HEADER", "Ticket"]

# gRPC's own retry pushback: a client with a retry policy waits this long before trying again.
RETRY_PUSHBACK_HEADER = "grpc-retry-pushback-ms"


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    initial: int = 400  # per kind of work, before latency has said otherwise: room for bursts
    minimum: int = 16
    maximum: int = 1000
    total: int = 2000  # the most the gateway admits across routes: a fixed cap
    tolerance: float = (
        2.0  # recent latency may rise this far above its long-run level before the limit shrinks
    )
    smoothing: float = 0.5  # how far one adjustment (one window of completions) moves the limit to its target
    # Time spent behind queued work counts this many times over against a deadline: estimates of it run low,
    # and work answered just past its deadline is work wasted that a refusal would have spared.
    queue_weight: float = 2.0


class GradientLimit:
    """One concurrency limit, fed the latency of completed work. Latency is averaged over windows of at least
    `window_s` and 10 completions, and the limit moves once per window, so one slow request moves nothing."""

    def __init__(self, policy: AdmissionPolicy, maximum: int | None = None, window_s: float = 0.1) -> None:
        self.policy = policy
        self.maximum = maximum or policy.maximum
        self.window_s = window_s
        self.limit = float(min(policy.initial, self.maximum))
        self.short_s: float | None = None  # mean latency of the last window
        self.short_rate = 0.0  # ...and the completions per second in it
        self.base_s: float | None = (
            None  # latency with nothing queued: the lowest window's, creeping up slowly
        )
        self._closed_at: float | None = None  # when the last window closed
        self.long_s: float | None = None  # ...smoothed over the last ~20 windows
        self.samples = 0
        self._window: list[float] = [0.0, 0.0, 0.0, 0.0]  # start, latency sum, completions, most in flight

    def expected_s(self, in_flight: int) -> float | None:
        """How long new work waits for its answer with `in_flight` already ahead of it, once enough work has
        completed to go by: the recent latency, or, where lower, the work ahead over the rate work recently
        completed at (Little's law). The second is what sees a queue drain: refused work completes nothing, so a
        latency measured behind a queue would otherwise stand, and refuse everything, forever."""
        if self.samples < 20 or self.short_s is None:
            return None
        return min(self.short_s, (in_flight + 1) / self.short_rate) if self.short_rate else self.short_s

    def queueing_s(self, expected_s: float) -> float:
        """The part of `expected_s` that is waiting behind other work, not the work itself."""
        return max(0.0, expected_s - (self.base_s or 0.0))

    def observe(self, latency_s: float, in_flight: int, now: float) -> None:
        self.samples += 1
        window = self._window
        if window[2] == 0:
            window[0] = now
        window[1] += latency_s
        window[2] += 1
        window[3] = max(window[3], in_flight)
        if window[2] < 10 or now - window[0] < self.window_s:
            return
        mean, busiest = window[1] / window[2], window[3]
        if self._closed_at is None:  # the first window: its first completion starts the clock
            self.short_rate = (window[2] - 1) / (now - window[0])
        else:
            self.short_rate = window[2] / (now - self._closed_at)
        self._closed_at = now
        # ~10 % a second upwards: a slow rise of the latency itself (a bigger model, busier GPU) is taken in
        self.base_s = mean if self.base_s is None or mean < self.base_s else self.base_s * 1.01
        self._window = [0.0, 0.0, 0.0, 0.0]
        self._adjust(mean, busiest)

    def _adjust(self, latency_s: float, in_flight: float) -> None:
        if self.short_s is None or self.long_s is None:
            self.short_s = self.long_s = latency_s
            return
        self.short_s = latency_s
        self.long_s += (latency_s - self.long_s) * 0.05
        if self.long_s > 2 * self.short_s:
            self.long_s *= 0.9  # after a slow spell, let the long-run level come back down faster
        if in_flight < self.limit / 2:
            return  # the limit is not what holds work back: no evidence to move it
        gradient = max(0.5, min(1.0, self.policy.tolerance * self.long_s / max(self.short_s, 1e-9)))
        target = self.limit * gradient + math.sqrt(self.limit)
        limit = self.limit + (target - self.limit) * self.policy.smoothing
        self.limit = max(float(self.policy.minimum), min(float(self.maximum), limit))


class Ticket:
    """Admitted work; `with ticket:` gives its place back, and feeds its latency to the limits if it completed."""

    __slots__ = ("_admission", "_route", "_started")

    def __init__(self, admission: Admission, route: str, started: float) -> None:
        self._admission = admission
        self._route = route
        self._started = started

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        # A latency sample when the work ran its course: answered, or out of time (a sign of queueing). Not for a
        # cancelled caller, bad input or a downstream refusal, which say nothing about how long work takes here.
        completed = exc is None or (isinstance(exc, MeshError) and exc.code is ErrorCode.DEADLINE_EXCEEDED)
        self._admission._leave(self._route, self._started, completed)


class Admission:
    """Bounds the work the gateway admits, per kind of work ("<route>:infer", "<route>:predict") and in total.
    Each kind gets a limit when first admitted (route names are checked against the route table before this)."""

    def __init__(
        self, policy: AdmissionPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or AdmissionPolicy()
        self.clock = clock
        self.limits: dict[str, GradientLimit] = {}
        self.in_flight: Counter[str] = Counter()
        self.in_flight_total = 0
        self.refused: Counter[tuple[str, str]] = Counter()  # (route, why) -> requests refused

    @classmethod
    def unlimited(cls) -> Admission:
        """Admission that admits everything (for handlers built without one, e.g. in unit tests)."""
        return cls(AdmissionPolicy(initial=10**9, maximum=10**9, total=10**9))

    def admit(self, route: str, time_left_s: float | None) -> Ticket:
        """A ticket for one unit of work on `route`, or ResourceExhausted / DeadlineExceeded at once."""
        limit = self.limits.get(route)
        if limit is None:
            limit = self.limits[route] = GradientLimit(self.policy)
        if self.in_flight[route] >= limit.limit or self.in_flight_total >= self.policy.total:
            self.refused[(route, "limit")] += 1
            wait_ms = max(1, round(1000 * (limit.short_s or 0.001)))
            raise ResourceExhausted(
                f"{route!r} is at its concurrency limit ({self.in_flight[route]} in flight, limit "
                f"{limit.limit:.0f}; gateway {self.in_flight_total} of {self.policy.total}); retry in about "
                f"{wait_ms} ms",
                metadata=((RETRY_PUSHBACK_HEADER, str(wait_ms)),),
            )
        ahead = self.in_flight[route]
        expected = limit.expected_s(ahead)
        if time_left_s is not None and expected is not None:
            wait = expected
            if time_left_s < wait and ahead == 0:  # nothing queued ahead of it: retrying cannot help
                self.refused[(route, "deadline")] += 1
                raise DeadlineExceeded(
                    f"{route!r} answers in about {wait * 1000:.0f} ms now; the call has "
                    f"{max(time_left_s, 0) * 1000:.0f} ms left"
                )
            judged = wait + limit.queueing_s(expected) * (self.policy.queue_weight - 1)
            if time_left_s < judged:  # the work queued ahead of it is what would make it late
                self.refused[(route, "queue")] += 1
                wait_ms = max(1, round(1000 * (judged - time_left_s)))
                raise ResourceExhausted(
                    f"{route!r} has {ahead} requests ahead and answers in about {wait * 1000:.0f} ms now, too "
                    f"close to the {max(time_left_s, 0) * 1000:.0f} ms the call has left; retry in about {wait_ms} ms",
                    metadata=((RETRY_PUSHBACK_HEADER, str(wait_ms)),),
                )
        self.in_flight[route] += 1
        self.in_flight_total += 1
        return Ticket(self, route, self.clock())

    def _leave(self, route: str, started: float, completed: bool) -> None:
        in_flight = self.in_flight[route]
        self.in_flight[route] = in_flight - 1
        self.in_flight_total -= 1
        if completed:
            now = self.clock()
            self.limits[route].observe(now - started, in_flight, now)
