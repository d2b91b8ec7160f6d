"""Automated canary analysis: step a canary's weight up while it is as healthy as the baseline; roll it back to 0
on a breach. Judgements read the dispatcher's per-variant outcomes; every step and rollback is audited.

The controller owns rollout state. Each state is immutable and replaced whole, so a read (the admin API, the
metrics scrape) gets a consistent snapshot and never creates an entry. A manual change to a route (weights,
promote, rollback, reload, version switch), announced by LiveRoutes, stops that route's rollout: otherwise its next
step would overwrite the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from gateway.live import LiveRoutes, RouteChange
from gateway.routes import Rollout, Route
from gateway.stats import VariantStats, WindowSummary
from meshserve.core.errors import FailedPrecondition

log = logging.getLogger(__name__)
WHO = "rollout"


ACTIVE = ("running", "paused")


@dataclass(frozen=True, slots=True)
class RolloutState:
    state: str = "none"  # none | running | paused | completed | rolled_back | stopped (by a manual change)
    step: int = 0
    step_started: float = 0.0
    last_reason: str = ""


NO_ROLLOUT = RolloutState()


def judge(plan: Rollout, canary: WindowSummary, baseline: WindowSummary) -> str | None:
    """Why the canary breaches the plan's thresholds, or None while it is healthy. Pure."""
    increase = canary.error_rate - baseline.error_rate
    if increase > plan.max_error_rate_increase:
        return (
            f"canary error rate {canary.error_rate:.1%} exceeds baseline {baseline.error_rate:.1%} "
            f"by more than {plan.max_error_rate_increase:.1%}"
        )
    if baseline.p99_s > 0 and canary.p99_s > plan.max_p99_ratio * baseline.p99_s:
        return (
            f"canary p99 {canary.p99_s * 1000:.1f} ms is over {plan.max_p99_ratio}x "
            f"the baseline's {baseline.p99_s * 1000:.1f} ms"
        )
    return None


class RolloutController:
    def __init__(
        self,
        live: LiveRoutes,
        stats: VariantStats,
        tick_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live = live
        self.stats = stats
        self.tick_s = tick_s
        self.clock = clock
        self._states: dict[str, RolloutState] = {}
        self._changing: set[str] = set()  # routes this controller is changing right now: not manual changes
        self._task: asyncio.Task[None] | None = None
        live.subscribe(self._on_route_change)

    @property
    def states(self) -> dict[str, RolloutState]:
        """A copy, safe to iterate while the controller works (and from the metrics thread)."""
        return self._states.copy()

    def state(self, route: str) -> RolloutState:
        return self._states.get(route, NO_ROLLOUT)

    def _plan(self, name: str) -> tuple[Route, Rollout]:
        route = self.live.get(name)
        if route.rollout is None:
            raise FailedPrecondition(f"route {name!r} declares no rollout plan")
        return route, route.rollout

    def start(self, name: str, who: str) -> None:
        route, plan = self._plan(name)
        self._states[name] = RolloutState("running", 0, self.clock())
        self._set_step(name, route, plan, 0, who)

    def pause(self, name: str) -> None:
        self._plan(name)
        state = self.state(name)
        if state.state != "running":
            raise FailedPrecondition(f"route {name!r} has no running rollout (state: {state.state})")
        self._states[name] = replace(state, state="paused")

    def resume(self, name: str) -> None:
        self._plan(name)
        state = self.state(name)
        if state.state != "paused":
            raise FailedPrecondition(f"route {name!r} has no paused rollout (state: {state.state})")
        self._states[name] = replace(state, state="running", step_started=self.clock())

    def stop(self, name: str, who: str, reason: str, outcome: str = "stopped") -> bool:
        """End a running or paused rollout of the route, audited; False if there was none."""
        state = self._states.get(name)
        if state is None or state.state not in ACTIVE:
            return False
        self._states[name] = replace(state, state=outcome, last_reason=reason)
        before = {"state": state.state, "step": state.step}
        self.live.audit.append(who, "rollout_stopped", name, before, {"state": outcome}, reason)
        log.warning("rollout stopped", extra={"route": name, "who": who, "reason": reason})
        return True

    def _on_route_change(self, change: RouteChange) -> None:
        if change.route in self._changing:
            return
        why = f"{change.action} by {change.who}" + (f": {change.reason}" if change.reason else "")
        # A manual rollback is what the controller would do on a breach; anything else merely ends it.
        outcome = "rolled_back" if change.action == "rollback" else "stopped"
        self.stop(change.route, change.who, why, outcome)

    @contextlib.contextmanager
    def _own_change(self, name: str) -> Iterator[None]:
        self._changing.add(name)
        try:
            yield
        finally:
            self._changing.discard(name)

    def _set_step(self, name: str, route: Route, plan: Rollout, step: int, who: str) -> None:
        weight = plan.steps[step]
        weights = {v.name: 0.0 for v in route.variants}
        weights[plan.canary], weights[route.baseline.name] = weight, 100.0 - weight
        with self._own_change(name):
            self.live.set_weights(
                name, weights, who, "rollout_step", f"step {step + 1}/{len(plan.steps)}: canary at {weight}%"
            )
        self.stats.forget(name, plan.canary)
        self.stats.forget(name, route.baseline.name)

    async def evaluate(self) -> None:
        """One pass over running rollouts: roll back a breach, advance a healthy step whose interval is over."""
        for name in list(self._states):
            await self._evaluate_one(name)

    async def _evaluate_one(self, name: str) -> None:
        # Read the state now, not from a snapshot taken before an earlier route's rollback was awaited.
        state = self._states.get(name)
        if state is None or state.state != "running":
            return
        route = self.live.routes.get(name)
        if route is None or route.rollout is None:
            # Every change through LiveRoutes stops the rollout first; this only guards against one that did not.
            self.stop(name, WHO, "the route or its rollout plan is gone")
            return
        plan = route.rollout
        canary = self.stats.summary(name, plan.canary, since=state.step_started)
        baseline = self.stats.summary(name, route.baseline.name, since=state.step_started)
        if canary.requests >= plan.min_requests and (reason := judge(plan, canary, baseline)):
            self._states[name] = replace(state, state="rolled_back", last_reason=reason)
            with self._own_change(name):
                await self.live.rollback(name, WHO, reason)
            log.warning("canary rolled back", extra={"route": name, "reason": reason})
            return
        if self.clock() - state.step_started < plan.interval_s or canary.requests < plan.min_requests:
            return
        if state.step + 1 == len(plan.steps):
            self._states[name] = replace(
                state, state="completed", last_reason=f"canary healthy at {plan.steps[-1]}%"
            )
            return
        step = state.step + 1
        self._states[name] = replace(state, step=step, step_started=self.clock())
        self._set_step(name, route, plan, step, WHO)

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # noqa: BLE001 - the controller must outlive a bad tick
                log.exception("rollout evaluation failed")
            await asyncio.sleep(self.tick_s)

    def run(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="rollouts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
