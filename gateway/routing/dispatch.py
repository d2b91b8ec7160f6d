"""Sends one unit of work down a route's tiers: the chosen variant, then its fallback chain.

Per tier: skip it while ejected, inject configured faults, retry "try elsewhere" failures within the route's
retry budget, and never start an attempt the deadline cannot cover. Only a variant's own failures count against
it (ejection, error rates); when every tier is ejected, all are tried anyway (panic mode), so the route's own
bookkeeping can never refuse every request. No gRPC here.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, TypeVar

from gateway.routing.resilience import OutlierEjection, RetryBudget, try_elsewhere, variant_failed
from gateway.routing.routes import Route, Variant
from gateway.routing.stats import VariantStats
from meshserve.core.errors import DeadlineExceeded, ErrorCode, MeshError, Unavailable

T = TypeVar("T")
MIN_ATTEMPT_S = 0.025  # below this an attempt cannot finish (each hop keeps a margin); fail fast instead


class Tier(IntEnum):  # values match meshserve.gateway.v1.Tier
    PRIMARY = 1
    FALLBACK = 2
    DEFAULT = 3


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    value: T
    variant: Variant
    tier: Tier


class AllTiersFailed(Unavailable):
    """Every tier of the route failed with a "try elsewhere" code (or was ejected)."""


class Dispatcher:
    def __init__(
        self,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        ejection: OutlierEjection | None = None,
        stats: VariantStats | None = None,
        max_deadline_s: float = 300.0,
    ) -> None:
        self.max_deadline_s = max_deadline_s
        self.rng = rng or random.Random()
        self.clock = clock
        self.ejection = ejection or OutlierEjection(clock=clock)
        self.stats = stats or VariantStats(clock=clock)
        self.retries = 0  # retries granted by the budget, since start
        self.panics = 0  # requests that found every tier ejected and tried them anyway
        self._budgets: dict[str, RetryBudget] = {}

    def deadline(self, route: Route, time_left_s: float | None) -> float:
        """The absolute deadline of a request: the caller's (as Triton, a long deadline is the caller's to give),
        else the route's timeout; never more than `max_deadline_s`."""
        own = route.timeout_ms / 1000 if time_left_s is None else time_left_s
        budget = min(own, self.max_deadline_s)
        return self.clock() + budget

    async def run(
        self,
        route_name: str,
        route: Route,
        first: Variant,
        attempt: Callable[[Variant, float], Awaitable[T]],
        deadline: float,
    ) -> Served[T]:
        budget = self._budgets.get(route_name)
        if budget is None or budget.ratio != route.retry.budget_ratio:
            budget = self._budgets[route_name] = RetryBudget(route.retry.budget_ratio, clock=self.clock)
        budget.record_request()
        tiers = route.tiers(first)
        keys = [f"{route_name}/{v.name}" for v in route.variants]
        panic = all(self.ejection.blocked(f"{route_name}/{v.name}") for v in tiers)
        self.panics += panic
        last: MeshError | None = None
        for index, variant in enumerate(tiers):
            key = f"{route_name}/{variant.name}"
            if not panic and not self.ejection.available(key):
                last = Unavailable(f"variant {variant.name!r} is ejected after repeated failures")
                continue
            for number in range(route.retry.max_attempts):
                if number > 0:
                    if not budget.try_acquire():
                        break
                    self.retries += 1
                remaining = deadline - self.clock()
                if remaining < MIN_ATTEMPT_S:
                    raise DeadlineExceeded(
                        f"deadline reached after trying {index} tier(s); last error: {last}"
                    )
                # Leave the tiers after this one a share of the time: a slow canary must not eat the fallback's.
                timeout = remaining if index == len(tiers) - 1 else remaining / (len(tiers) - index)
                started = self.clock()
                try:
                    await self.inject_faults(route, variant, timeout)
                    value = await attempt(variant, timeout)
                except MeshError as exc:
                    # Only the variant's own failures count against it: not a caller's bad input or deadline,
                    # not overload, not another dependency's outage (those would eject a healthy variant).
                    if variant_failed(exc):
                        self.stats.record(route_name, variant.name, False, self.clock() - started)
                        self.ejection.record(key, ok=False, group=keys)
                    if not try_elsewhere(exc):
                        raise
                    last = exc
                    continue
                self.stats.record(route_name, variant.name, True, self.clock() - started)
                self.ejection.record(key, ok=True)
                return Served(value, variant, Tier.PRIMARY if index == 0 else Tier.FALLBACK)
        if deadline - self.clock() < MIN_ATTEMPT_S or (
            last is not None and last.code is ErrorCode.DEADLINE_EXCEEDED
        ):
            raise DeadlineExceeded(f"deadline reached on route {route_name!r}; last error: {last}")
        raise AllTiersFailed(f"every tier of route {route_name!r} failed; last error: {last}")

    async def inject_faults(self, route: Route, variant: Variant, time_left_s: float) -> None:
        """Apply the route's configured faults for `variant` (delays, aborts) to one call."""
        for fault in route.faults:
            if fault.variant != variant.name:
                continue
            if fault.delay_ms and self.rng.random() * 100 < fault.delay_percent:
                delay = fault.delay_ms / 1000
                await asyncio.sleep(min(delay, time_left_s))
                if delay >= time_left_s:
                    raise DeadlineExceeded(
                        f"injected delay of {fault.delay_ms} ms on variant {variant.name!r}"
                    )
            if self.rng.random() * 100 < fault.abort_percent:
                raise MeshError(f"injected fault on variant {variant.name!r}", ErrorCode[fault.abort_code])
