"""Automated canary analysis: step a canary's weight up while it is as healthy as the baseline; roll it back to 0
on a breach. Judgements read the dispatcher's per-variant outcomes; every step and rollback is audited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.live import LiveRoutes
from gateway.routes import Rollout, Route
from gateway.stats import VariantStats, WindowSummary
from meshserve.core.errors import FailedPrecondition

log = logging.getLogger(__name__)
WHO = "rollout"


@dataclass
class RolloutState:
    state: str = "none"  # none | running | paused | completed | rolled_back
    step: int = 0
    step_started: float = 0.0
    last_reason: str = ""


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
        self.states: dict[str, RolloutState] = {}
        self._task: asyncio.Task[None] | None = None

    def state(self, route: str) -> RolloutState:
        return self.states.setdefault(route, RolloutState())

    def _plan(self, name: str) -> tuple[Route, Rollout]:
        route = self.live.get(name)
        if route.rollout is None:
            raise FailedPrecondition(f"route {name!r} declares no rollout plan")
        return route, route.rollout

    def start(self, name: str, who: str) -> None:
        route, plan = self._plan(name)
        self.states[name] = RolloutState("running", 0, self.clock())
        self._set_step(name, route, plan, 0, who)

    def pause(self, name: str) -> None:
        self._plan(name)
        state = self.state(name)
        if state.state != "running":
            raise FailedPrecondition(f"route {name!r} has no running rollout (state: {state.state})")
        state.state = "paused"

    def resume(self, name: str) -> None:
        self._plan(name)
        state = self.state(name)
        if state.state != "paused":
            raise FailedPrecondition(f"route {name!r} has no paused rollout (state: {state.state})")
        state.state, state.step_started = "running", self.clock()

    def stop(self, name: str, reason: str) -> None:
        """A manual rollback ends any rollout of the route."""
        state = self.state(name)
        if state.state in ("running", "paused"):
            state.state, state.last_reason = "rolled_back", reason

    def _set_step(self, name: str, route: Route, plan: Rollout, step: int, who: str) -> None:
        weight = plan.steps[step]
        weights = {v.name: 0.0 for v in route.variants}
        weights[plan.canary], weights[route.baseline.name] = weight, 100.0 - weight
        self.live.set_weights(
            name, weights, who, "rollout_step", f"step {step + 1}/{len(plan.steps)}: canary at {weight}%"
        )
        self.stats.forget(name, plan.canary)
        self.stats.forget(name, route.baseline.name)

    async def evaluate(self) -> None:
        """One pass over running rollouts: roll back a breach, advance a healthy step whose interval is over."""
        for name, state in self.states.items():
            if state.state != "running" or name not in self.live.routes:
                continue
            route, plan = self._plan(name)
            canary = self.stats.summary(name, plan.canary, since=state.step_started)
            baseline = self.stats.summary(name, route.baseline.name, since=state.step_started)
            if canary.requests >= plan.min_requests and (reason := judge(plan, canary, baseline)):
                state.state, state.last_reason = "rolled_back", reason
                await self.live.rollback(name, WHO, reason)
                log.warning("canary rolled back", extra={"route": name, "reason": reason})
                continue
            if self.clock() - state.step_started < plan.interval_s or canary.requests < plan.min_requests:
                continue
            if state.step + 1 == len(plan.steps):
                state.state, state.last_reason = "completed", f"canary healthy at {plan.steps[-1]}%"
                continue
            state.step += 1
            state.step_started = self.clock()
            self._set_step(name, route, plan, state.step, WHO)

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
