"""Automated canary analysis: step a canary's weight up while it is as healthy as the baseline; roll it back to 0
on a breach. Judgements read the dispatcher's per-variant outcomes; every step and rollback is audited.

The controller owns rollout state. Each state is immutable and replaced whole, so a read (the admin API, the
metrics scrape) gets a consistent snapshot and never creates an entry. A manual change to a route (weights,
promote, rollback, reload, version switch), announced by LiveRoutes, stops that route's rollout: otherwise its next
step would overwrite the change.

With a control store, rollout state lives in the store's document beside the table (every replica shows it, and
changes to it are compare-and-set like the table's), a manual change stops a rollout in the same write, and only
the replica holding the judge's lease in the store evaluates rollouts; when it dies its lease expires and another
replica takes over. It judges every replica's traffic: each publishes its outcome buckets to the store
(StatsPublisher) and the judge merges the fresh ones with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from gateway.routing.live import LiveRoutes, RouteChange
from gateway.routing.routes import Rollout, Route
from gateway.routing.stats import VariantStats, WindowSummary, exported_buckets
from meshserve.core.errors import FailedPrecondition, MeshError
from meshserve.core.logs import Throttle

log = logging.getLogger(__name__)
WHO = "rollout"
JUDGE_LEASE = "rollout-judge"
PUBLISH_S = 0.5  # how often each gateway publishes its outcome buckets to the control store
# How often the judge writes a judgement that decided nothing to the control store (one that steps, completes or
# rolls back goes in that decision's own write): every replica shows it, without a store write every tick.
JUDGEMENT_WRITE_S = 2.0
STALE_S = 4 * PUBLISH_S  # older published buckets are from a gateway that died (or lost the store): ignored


ACTIVE = ("running", "paused")


@dataclass(frozen=True, slots=True)
class Window:
    """One side of a judgement: a variant's outcomes since the step started (this gateway's and, with a control
    store, every gateway's published ones)."""

    variant: str
    requests: int
    errors: int
    p99_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, variant: str, summary: WindowSummary) -> Window:
        return cls(variant, summary.requests, summary.errors, summary.p99_s)


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the judge measured at one evaluation and what it made of it, with the plan's thresholds: shown by the
    admin API and Prometheus, and written into the audit entry of the step, completion or rollback it decided."""

    at: float  # wall-clock time of the evaluation
    step: int  # the step judged (index into the plan's steps)
    verdict: str  # waiting (fewer canary requests than min_requests) | healthy | breach
    canary: Window
    baseline: Window
    max_error_rate_increase: float
    max_p99_ratio: float
    min_requests: int
    reason: str = ""  # why a breach is one

    def describe(self) -> str:
        """The numbers in one line, for audit entries and the CLI."""

        def side(w: Window) -> str:
            return (
                f"{w.variant} {w.requests} requests, {w.error_rate:.1%} errors, p99 {w.p99_s * 1000:.1f} ms"
            )

        return (
            f"{self.verdict} at step {self.step + 1}: canary {side(self.canary)}; baseline {side(self.baseline)}; "
            f"thresholds: error rate +{self.max_error_rate_increase:.1%}, p99 x{self.max_p99_ratio:g}, "
            f"{self.min_requests} requests"
        )

    def to_dict(self) -> dict:
        """JSON-ready, for the control store (rollout state travels there as plain data)."""
        return {
            "at": self.at, "step": self.step, "verdict": self.verdict, "reason": self.reason,
            "canary": [self.canary.variant, self.canary.requests, self.canary.errors, self.canary.p99_s],
            "baseline": [self.baseline.variant, self.baseline.requests, self.baseline.errors, self.baseline.p99_s],
            "max_error_rate_increase": self.max_error_rate_increase, "max_p99_ratio": self.max_p99_ratio,
            "min_requests": self.min_requests,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Judgement:
        return cls(
            d["at"], d["step"], d["verdict"], Window(*d["canary"]), Window(*d["baseline"]),
            d["max_error_rate_increase"], d["max_p99_ratio"], d["min_requests"], d.get("reason", ""),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class RolloutState:
    state: str = "none"  # none | running | paused | completed | rolled_back | stopped (by a manual change)
    step: int = 0
    step_started: float = 0.0
    last_reason: str = ""
    judgement: Judgement | None = None  # the last evaluation's


NO_ROLLOUT = RolloutState()


def assess(plan: Rollout, step: int, canary: Window, baseline: Window, at: float) -> Judgement:
    """The judgement of one evaluation: a breach only once the canary has `min_requests`. Pure."""
    reason = judge(plan, canary, baseline) if canary.requests >= plan.min_requests else None
    if reason is not None:
        verdict = "breach"
    else:
        verdict = "healthy" if canary.requests >= plan.min_requests else "waiting"
    return Judgement(at, step, verdict, canary, baseline, plan.max_error_rate_increase, plan.max_p99_ratio,
                     plan.min_requests, reason or "")  # fmt: skip


def judge(plan: Rollout, canary: WindowSummary | Window, baseline: WindowSummary | Window) -> str | None:
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
        wall: Callable[[], float] = time.time,
        lease_s: float = 2.0,
    ) -> None:
        self.live = live
        self.stats = stats
        self.tick_s = tick_s
        self.clock = clock
        self.wall = (
            wall  # shared state carries wall-clock times: another replica's monotonic clock means nothing
        )
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._local: dict[str, RolloutState] = {}
        self._changing: set[str] = set()  # routes this controller is changing right now: not manual changes
        self._task: asyncio.Task[None] | None = None
        self._throttle = Throttle(30.0)
        live.subscribe(self._on_route_change)
        live.rollout_hook = self._stop_for

    @property
    def _shared(self) -> bool:
        return self.live.store is not None

    @property
    def _states(self) -> dict[str, RolloutState]:
        """This process's states, or (with a control store) those the store holds: read-only there."""
        if not self._shared:
            return self._local
        return {name: self._decode(d) for name, d in self.live.rollouts.items()}

    def _encode(self, state: RolloutState) -> dict:
        started_at = self.wall() - (self.clock() - state.step_started)
        return {
            "state": state.state,
            "step": state.step,
            "started_at": started_at,
            "last_reason": state.last_reason,
            "judgement": None if state.judgement is None else state.judgement.to_dict(),
        }

    def _decode(self, d: dict) -> RolloutState:
        step_started = self.clock() - (self.wall() - d["started_at"])
        judged = d.get("judgement")  # absent in state written before judgements were kept
        judgement = None if judged is None else Judgement.from_dict(judged)
        return RolloutState(d["state"], d["step"], step_started, d.get("last_reason", ""), judgement)

    def _put(self, name: str, state: RolloutState, expect: str | None = None) -> Callable[[dict], dict]:
        """The shared rollouts with `name` set to `state` (re-applied on a conflict: `expect` is checked again)."""

        def put(rollouts: dict) -> dict:
            current = rollouts.get(name, {}).get("state", "none")
            if expect is not None and current != expect:
                raise FailedPrecondition(f"route {name!r} has no {expect} rollout (state: {current})")
            return {**rollouts, name: self._encode(state)}

        return put

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
        """Start a rollout on this process's own table (no control store; else `begin`)."""
        route, plan = self._plan(name)
        self._states[name] = RolloutState("running", 0, self.clock())
        self._set_step(name, route, plan, 0, who)

    async def begin(self, name: str, who: str) -> None:
        """Start a rollout; its first step is written to the control store when there is one, and a failed write
        (UNAVAILABLE) leaves no rollout behind."""
        if not self._shared:
            self.start(name, who)
            return
        route, plan = self._plan(name)
        await self._step(name, route, plan, 0, who, RolloutState("running", 0, self.clock()))

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume, in the control store when there is one."""
        if not self._shared:
            self.pause(name) if paused else self.resume(name)
            return
        self._plan(name)
        state = self.state(name)
        if paused:
            new, expect = replace(state, state="paused"), "running"
        else:
            new, expect = replace(state, state="running", step_started=self.clock()), "paused"
        if state.state != expect:
            raise FailedPrecondition(f"route {name!r} has no {expect} rollout (state: {state.state})")
        await self.live.change_rollouts(self._put(name, new, expect), [])

    def pause(self, name: str) -> None:
        if self._shared:
            raise RuntimeError("with a control store, rollouts pause and resume through set_paused")
        self._plan(name)
        state = self.state(name)
        if state.state != "running":
            raise FailedPrecondition(f"route {name!r} has no running rollout (state: {state.state})")
        self._states[name] = replace(state, state="paused")

    def resume(self, name: str) -> None:
        if self._shared:
            raise RuntimeError("with a control store, rollouts pause and resume through set_paused")
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

    def _stop_for(self, rollouts: dict, changes: list[RouteChange]) -> tuple[dict, list]:
        """With a control store: the rollouts a change stops, and their audit entries, in the change's own write."""
        out, records = dict(rollouts), []
        for change in changes:
            current = out.get(change.route)
            if change.route in self._changing or current is None or current["state"] not in ACTIVE:
                continue
            why = f"{change.action} by {change.who}" + (f": {change.reason}" if change.reason else "")
            outcome = "rolled_back" if change.action == "rollback" else "stopped"
            out[change.route] = {**current, "state": outcome, "last_reason": why}
            before = {"state": current["state"], "step": current["step"]}
            records.append((change.who, "rollout_stopped", change.route, before, {"state": outcome}, why))
            log.warning("rollout stopped", extra={"route": change.route, "who": change.who, "reason": why})
        return out, records

    def _on_route_change(self, change: RouteChange) -> None:
        if change.route in self._changing or self._shared:  # shared: stopped in the change's write
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

    @staticmethod
    def _step_weights(route: Route, plan: Rollout, step: int) -> tuple[dict[str, float], str]:
        weight = plan.steps[step]
        weights = {v.name: 0.0 for v in route.variants}
        weights[plan.canary], weights[route.baseline.name] = weight, 100.0 - weight
        return weights, f"step {step + 1}/{len(plan.steps)}: canary at {weight}%"

    def _set_step(
        self, name: str, route: Route, plan: Rollout, step: int, who: str, judgement: Judgement | None = None
    ) -> None:
        weights, reason = self._step_weights(route, plan, step)
        if judgement is not None:
            reason = f"{reason}; {judgement.describe()}"
        with self._own_change(name):
            self.live.set_weights(name, weights, who, "rollout_step", reason)
        self.stats.forget(name, plan.canary)
        self.stats.forget(name, route.baseline.name)

    async def _step(
        self, name: str, route: Route, plan: Rollout, step: int, who: str, state: RolloutState | None = None,
        judgement: Judgement | None = None,
    ) -> None:  # fmt: skip
        weights, reason = self._step_weights(route, plan, step)
        if judgement is not None:
            reason = f"{reason}; {judgement.describe()}"
        rollouts = None if state is None else self._put(name, state)
        with self._own_change(name):
            await self.live.change_weights(name, weights, who, "rollout_step", reason, rollouts)
        self.stats.forget(name, plan.canary)
        self.stats.forget(name, route.baseline.name)

    async def evaluate(self) -> None:
        """One pass over running rollouts: roll back a breach, advance a healthy step whose interval is over."""
        if self._shared:
            if not await self._lead():
                return
            names = [name for name, state in self._states.items() if state.state == "running"]
            remote = await self._remote_stats() if names else []
            for name in names:
                await self._evaluate_shared(name, remote)
            return
        for name in list(self._states):
            await self._evaluate_one(name)

    async def _lead(self) -> bool:
        """Take or renew the judge's lease; only its holder judges."""
        assert self.live.store is not None
        try:
            leading = await self.live.store.lease(JUDGE_LEASE, self.holder, self.lease_s)
        except MeshError:  # the store is down: nobody judges (a step could not be written anyway)
            self.leading = False
            raise
        if leading != self.leading:
            log.info("rollout judge " + ("here" if leading else "elsewhere"), extra={"holder": self.holder})
        self.leading = leading
        return leading

    async def _remote_stats(self) -> list[list[dict]]:
        """The other gateways' fresh published buckets (this one's own are read directly: they are newer)."""
        assert self.live.store is not None
        published = await self.live.store.read_stats(self.wall(), STALE_S)
        return [stats for gateway, (_, stats) in published.items() if gateway != self.holder]

    def _summary(self, name: str, variant: str, since: float, remote: Sequence[list[dict]]) -> WindowSummary:
        """This gateway's outcomes and the other gateways' published ones, merged (their starts are wall times)."""
        extra = exported_buckets(remote, name, variant, self.clock() - self.wall())
        return self.stats.summary(name, variant, since=since, extra=extra)

    def _judgement(self, name: str, route: Route, plan: Rollout, state: RolloutState,
                   remote: Sequence[list[dict]] | None) -> Judgement:  # fmt: skip
        """Judge the step running since `state.step_started`; with a control store (`remote` given) on every
        gateway's outcomes."""
        if remote is None:
            canary = self.stats.summary(name, plan.canary, since=state.step_started)
            baseline = self.stats.summary(name, route.baseline.name, since=state.step_started)
        else:
            canary = self._summary(name, plan.canary, state.step_started, remote)
            baseline = self._summary(name, route.baseline.name, state.step_started, remote)
        return assess(plan, state.step, Window.of(plan.canary, canary), Window.of(route.baseline.name, baseline),
                      self.wall())  # fmt: skip

    def _due(self, state: RolloutState, plan: Rollout, judgement: Judgement) -> bool:
        """Whether a healthy step has run its interval with enough canary requests: time for the next one."""
        return judgement.verdict == "healthy" and self.clock() - state.step_started >= plan.interval_s

    @staticmethod
    def _completion(name: str, state: RolloutState, plan: Rollout, judgement: Judgement) -> tuple:
        """The completed state and its audit record (who, action, route, before, after, reason)."""
        reason = f"canary healthy at {plan.steps[-1]}%"
        done = replace(state, state="completed", last_reason=reason, judgement=judgement)
        record = (WHO, "rollout_completed", name, {"state": state.state, "step": state.step},
                  {"state": "completed"}, f"{reason}; {judgement.describe()}")  # fmt: skip
        return done, record

    async def _evaluate_shared(self, name: str, remote: Sequence[list[dict]] = ()) -> None:
        state = self.state(name)
        if state.state != "running":
            return
        route = self.live.routes.get(name)
        if route is None or route.rollout is None:
            reason = "the route or its rollout plan is gone"
            record = (WHO, "rollout_stopped", name, {"state": state.state, "step": state.step}, {"state": "stopped"},
                      reason)  # fmt: skip
            await self.live.change_rollouts(
                self._put(name, replace(state, state="stopped", last_reason=reason), "running"), [record]
            )
            return
        plan = route.rollout
        judgement = self._judgement(name, route, plan, state, remote)
        if judgement.verdict == "breach":
            rolled_back = replace(
                state, state="rolled_back", last_reason=judgement.reason, judgement=judgement
            )
            with self._own_change(name):
                await self.live.rollback(name, WHO, f"{judgement.reason}; {judgement.describe()}",
                                         self._put(name, rolled_back, "running"))  # fmt: skip
            log.warning("canary rolled back", extra={"route": name, "reason": judgement.reason})
            return
        if not self._due(state, plan, judgement):
            await self._write_judgement(name, state, judgement)
            return
        if state.step + 1 == len(plan.steps):
            done, record = self._completion(name, state, plan, judgement)
            await self.live.change_rollouts(self._put(name, done, "running"), [record])
            return
        step = state.step + 1
        new = replace(state, step=step, step_started=self.clock(), judgement=judgement)
        await self._step(name, route, plan, step, WHO, new, judgement)

    async def _write_judgement(self, name: str, state: RolloutState, judgement: Judgement) -> None:
        """Share a judgement that decided nothing, at most every JUDGEMENT_WRITE_S (a store write each)."""
        last = state.judgement
        if last is not None and last.step == judgement.step and judgement.at - last.at < JUDGEMENT_WRITE_S:
            return
        encoded = self._encode(replace(state, judgement=judgement))["judgement"]

        def put(rollouts: dict) -> dict:
            current = rollouts.get(name)
            if current is None or current.get("state") != "running" or current.get("step") != judgement.step:
                return rollouts  # changed meanwhile (stopped, stepped): this judgement is of the past
            return {**rollouts, name: {**current, "judgement": encoded}}

        await self.live.change_rollouts(put, [])

    async def _evaluate_one(self, name: str) -> None:  # this process's own rollouts (no control store)
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
        judgement = self._judgement(name, route, plan, state, None)
        if judgement.verdict == "breach":
            self._states[name] = replace(state, state="rolled_back", last_reason=judgement.reason,
                                         judgement=judgement)  # fmt: skip
            with self._own_change(name):
                await self.live.rollback(name, WHO, f"{judgement.reason}; {judgement.describe()}")
            log.warning("canary rolled back", extra={"route": name, "reason": judgement.reason})
            return
        if not self._due(state, plan, judgement):
            self._states[name] = replace(state, judgement=judgement)
            return
        if state.step + 1 == len(plan.steps):
            self._states[name], record = self._completion(name, state, plan, judgement)
            self.live.audit.append(*record)
            return
        step = state.step + 1
        self._states[name] = replace(state, step=step, step_started=self.clock(), judgement=judgement)
        self._set_step(name, route, plan, step, WHO, judgement)

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except MeshError as exc:  # e.g. the control store is down: say so once in a while, not every tick
                if self._throttle("mesh") is not None:
                    log.warning("rollout evaluation failed", extra={"error": exc.message})
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


class StatsPublisher:
    """Publishes this gateway's outcome buckets of running rollouts to the control store every `interval_s`, under
    its own id, so that the judge (wherever the lease is) decides on every gateway's traffic. Off the request
    path: it copies the stats between requests, and a store that is down only delays the next publish."""

    def __init__(
        self,
        live: LiveRoutes,
        stats: VariantStats,
        gateway: str,
        interval_s: float = PUBLISH_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        assert live.store is not None
        self.live, self.stats, self.gateway, self.interval_s, self.wall = (
            live,
            stats,
            gateway,
            interval_s,
            wall,
        )
        self._task: asyncio.Task[None] | None = None
        self._throttle = Throttle(30.0)

    async def publish(self) -> bool:
        """One publish, if a rollout is running (none: nothing is judged, nothing written)."""
        running = [name for name, d in self.live.rollouts.items() if d.get("state") == "running"]
        if not running:
            return False
        now = self.wall()
        export = self.stats.export(now - self.stats.clock(), running)  # bucket starts as wall times
        assert self.live.store is not None
        await self.live.store.publish_stats(self.gateway, now, export)
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.publish()
            except MeshError as exc:
                if self._throttle("mesh") is not None:
                    log.warning("publishing variant stats failed", extra={"error": exc.message})
            except Exception:  # noqa: BLE001 - the publisher must outlive a bad tick
                if self._throttle("error") is not None:
                    log.exception("publishing variant stats failed")
            await asyncio.sleep(self.interval_s)

    def run(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stats-publisher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
