"""Shadow traffic: after a caller has its answer, mirror the request to a shadow variant and compare.

The caller never waits for, or sees, the shadow: it runs as a background task, bounded in number, and a slow or
failing shadow only shows up in the comparison counters.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.routing.routes import Route, Shadow, Variant

log = logging.getLogger(__name__)


@dataclass
class ShadowTally:
    compared: int = 0
    failed: int = 0
    skipped: int = 0  # not mirrored because too many shadows were already in flight
    abs_diff_sum: float = 0.0
    agreements: int = 0

    @property
    def mean_abs_diff(self) -> float:
        return self.abs_diff_sum / self.compared if self.compared else 0.0

    @property
    def label_agreement(self) -> float:
        return self.agreements / self.compared if self.compared else 0.0


ScoreFn = Callable[[Variant, float], Awaitable[Sequence[float]]]
Observer = Callable[[str, str, Sequence[float], Sequence[float], Shadow], None]


class ShadowRunner:
    def __init__(self, rng: random.Random | None = None, max_in_flight: int = 64) -> None:
        self.rng = rng or random.Random()
        self.max_in_flight = max_in_flight
        self.tallies: dict[tuple[str, str], ShadowTally] = {}
        self.observers: list[Observer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def tally(self, route: str, variant: str) -> ShadowTally:
        return self.tallies.setdefault((route, variant), ShadowTally())

    def mirror(self, route_name: str, route: Route, primary: Sequence[float], score: ScoreFn) -> None:
        """Start the shadows this request is picked for; returns at once."""
        for shadow in route.shadows:
            if self.rng.random() * 100 >= shadow.percent:
                continue
            if len(self._tasks) >= self.max_in_flight:
                self.tally(route_name, shadow.variant).skipped += 1
                continue
            task = asyncio.create_task(self._run(route_name, route, shadow, list(primary), score))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, route_name: str, route: Route, shadow: Shadow, primary: list[float], score: ScoreFn
    ) -> None:
        tally = self.tally(route_name, shadow.variant)
        try:
            theirs = list(await score(route.variant(shadow.variant), route.timeout_ms / 1000))
        except Exception as exc:  # noqa: BLE001 - a shadow failure is data, never an error for anyone
            tally.failed += 1
            log.debug(
                "shadow failed", extra={"route": route_name, "variant": shadow.variant, "error": str(exc)}
            )
            return
        for ours, other in zip(primary, theirs, strict=True):
            tally.compared += 1
            tally.abs_diff_sum += abs(ours - other)
            tally.agreements += (ours >= shadow.label_threshold) == (other >= shadow.label_threshold)
        for observe in self.observers:
            observe(route_name, shadow.variant, primary, theirs, shadow)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
