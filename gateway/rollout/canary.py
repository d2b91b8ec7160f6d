"""Automated canary analysis: step a canary's weight up while it is as healthy as the baseline; roll it back to 0
on a breach. Judgements (gateway.rollout.judgement, pure) read the dispatcher's per-variant outcomes and, where the
plan has quality criteria, the monitor service's comparisons of labelled predictions; every step, completion and
rollback is audited with the numbers that decided it.

The controller owns rollout state. Each state is immutable and replaced whole, so a read (the admin API, the
metrics scrape) gets a consistent snapshot and never creates an entry. A manual change to a route (weights,
promote, rollback, reload, version switch), announced by LiveRoutes, stops that route's rollout: otherwise its next
step would overwrite the change.

With a control store, rollout state lives in the store's document beside the table (every replica shows it, and
changes to it are compare-and-set like the table's), a manual change stops a rollout in the same write, and only
the replica holding the judge's lease in the store evaluates rollouts; when it dies its lease expires and another
replica takes over. It judges every replica's traffic: each publishes its outcome buckets to the store
(StatsPublisher) and the judge merges the fresh ones with its own.

Quality: at most every `compare_every_s` the controller asks the monitor (an injected async `compare`, the
gateway's MonitorClient.compare) to compare the canary's labelled predictions with the baseline's since the step
started, each comparison at its share of the plan's alpha. Without a monitor, or while it fails, the step waits and
says why (and is rolled back once its longest wait has passed); the judge never stops for it. A plan's
`require_shadow` first judges that shadow on the same requests (a paired comparison against the primary variant):
the canary's first step starts only once the shadow has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from gateway.rollout.judgement import (
    METRICS,
    Judgement,
    Window,
    assess,
    comparison_alpha,
    judge,
    next_action,
    promotes,
)
from gateway.routing.live import LiveRoutes, RouteChange
from gateway.routing.routes import Rollout, RolloutQuality, Route
from gateway.routing.stats import VariantStats, WindowSummary, exported_buckets
from meshserve.core.errors import FailedPrecondition, MeshError
from meshserve.core.logs import Throttle
from meshserve.monitor.v1 import monitor_pb2
from meshserve.quality import Comparison

__all__ = [
    "NO_ROLLOUT",
    "Judgement",
    "QualityLook",
    "RolloutController",
    "RolloutState",
    "StatsPublisher",
    "Window",
    "assess",
    "judge",
]

log = logging.getLogger(__name__)
WHO = "rollout"
JUDGE_LEASE = "rollout-judge"
PUBLISH_S = 0.5  # how often each gateway publishes its outcome buckets to the control store
# How often the judge writes a judgement that decided nothing to the control store (one that steps, completes or
# rolls back goes in that decision's own write): every replica shows it, without a store write every tick.
JUDGEMENT_WRITE_S = 2.0
STALE_S = 4 * PUBLISH_S  # older published buckets are from a gateway that died (or lost the store): ignored


ACTIVE = ("running", "paused")
# How often the controller asks the monitor service to compare quality: labels arrive over minutes or hours, and
# each look costs the monitor a pass over the window; anytime-valid bounds allow any schedule of looks.
COMPARE_EVERY_S = 5.0
# The longest the judge waits for the monitor's answer: shorter than the judge's lease, so a slow monitor never lets
# the lease lapse mid-evaluation (another replica would start judging too).
COMPARE_TIMEOUT_S = 1.0
SHADOW_WINDOW_S = 3600.0  # the window a shadow is compared on outside a rollout's gate
NO_MONITOR = "no monitor service configured: quality criteria cannot be judged"
# A shadow of a route whose quality block is on but whose plan has no quality criteria is shown against these.
SHADOW_CRITERIA = RolloutQuality(max_auc_decrease=0.01, max_log_loss_ratio=1.05)

Compare = Callable[[monitor_pb2.CompareRequest], Awaitable[monitor_pb2.CompareResponse]]


@dataclass(frozen=True, slots=True)
class RolloutState:
    state: str = "none"  # none | running | paused | completed | rolled_back | stopped (by a manual change)
    step: int = 0
    step_started: float = 0.0  # of the step, or of the shadow gate
    last_reason: str = ""
    judgement: Judgement | None = None  # the last evaluation's
    gate: str = ""  # the shadow that must pass before the first step, while it has not: no canary traffic yet


NO_ROLLOUT = RolloutState()


@dataclass(frozen=True, slots=True)
class QualityLook:
    """The monitor's last answer for one window: its comparisons, or None and why there are none."""

    window: tuple  # what was compared: (step, gate, since) for a rollout, (variant, since) for a shadow
    at: float  # the controller's clock when it was asked
    found: tuple[Comparison, ...] | None
    note: str = ""


def comparison_from_proto(c: monitor_pb2.Comparison, alpha: float, min_samples: int) -> Comparison:
    """The monitor's comparison as the judge keeps it (quality.sequential's shape), with the alpha it was asked
    at and the plan's label minimum."""
    metric = METRICS.get(c.metric, c.metric)
    limit = -abs(c.limit) if metric == "AUC" else c.limit  # a decrease is negative on the difference's scale
    verdict = c.verdict or "waiting"
    # a comparison still waiting has no bounds or statistic yet (proto3 would say 0.0)
    lower, upper, statistic = (math.nan,) * 3 if verdict == "waiting" else (c.lower, c.upper, c.e_value)
    return Comparison(
        metric=metric, verdict=verdict, canary=c.canary_value, baseline=c.baseline_value, estimate=c.estimate,
        lower=lower, upper=upper, limit=limit, statistic=statistic, alpha=alpha, canary_samples=c.canary_labels,
        baseline_samples=c.baseline_labels, min_samples=min_samples,
    )  # fmt: skip


def shadow_criteria(route: Route) -> RolloutQuality | None:
    """The criteria a route's shadows are compared on (paired, against the primary variant): its plan's quality
    criteria, else SHADOW_CRITERIA where the route's own quality block is on; None: not compared."""
    if route.rollout is not None and route.rollout.quality is not None:
        return route.rollout.quality
    return SHADOW_CRITERIA if route.logged is not None else None


class RolloutController:
    def __init__(
        self,
        live: LiveRoutes,
        stats: VariantStats,
        tick_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        lease_s: float = 2.0,
        compare: Compare | None = None,
        compare_every_s: float = COMPARE_EVERY_S,
        compare_timeout_s: float = COMPARE_TIMEOUT_S,
    ) -> None:
        self.live = live
        self.stats = stats
        self.tick_s = tick_s
        self.clock = clock
        self.wall = (
            wall  # shared state carries wall-clock times: another replica's monotonic clock means nothing
        )
        self.lease_s = lease_s
        self.compare = compare  # the monitor's Compare (MonitorClient.compare); None: no monitor service
        self.compare_every_s = compare_every_s
        self.compare_timeout_s = min(compare_timeout_s, lease_s / 2)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = False
        self._local: dict[str, RolloutState] = {}
        self._changing: set[str] = set()  # routes this controller is changing right now: not manual changes
        self._looks: dict[str, QualityLook] = {}  # route -> the monitor's last answer for its rollout
        self._shadow_looks: dict[tuple[str, str], QualityLook] = {}  # (route, shadow) -> the last paired one
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
            "gate": state.gate,
        }

    def _decode(self, d: dict) -> RolloutState:
        step_started = self.clock() - (self.wall() - d["started_at"])
        judged = d.get("judgement")  # absent in state written before judgements were kept
        judgement = None if judged is None else Judgement.from_dict(judged)
        return RolloutState(
            d["state"], d["step"], step_started, d.get("last_reason", ""), judgement, d.get("gate", "")
        )

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

    @property
    def shadow_looks(self) -> dict[tuple[str, str], QualityLook]:
        """(route, shadow) -> the last paired quality comparison of a shadow against its route's primary variant."""
        return self._shadow_looks.copy()

    def _plan(self, name: str) -> tuple[Route, Rollout]:
        route = self.live.get(name)
        if route.rollout is None:
            raise FailedPrecondition(f"route {name!r} declares no rollout plan")
        return route, route.rollout

    @staticmethod
    def _gate_record(name: str, plan: Rollout, who: str, before: str) -> tuple:
        """The audit record of a rollout that starts by judging its required shadow."""
        reason = (
            f"shadow {plan.require_shadow} must pass on quality before step 1/{len(plan.steps)} "
            f"(canary at {plan.steps[0]}%)"
        )
        return (who, "rollout_started", name, {"state": before}, {"state": "running", "gate": plan.require_shadow},
                reason)  # fmt: skip

    def start(self, name: str, who: str) -> None:
        """Start a rollout on this process's own table (no control store; else `begin`)."""
        route, plan = self._plan(name)
        if plan.require_shadow:
            before = self.state(name).state
            self._states[name] = RolloutState("running", 0, self.clock(), gate=plan.require_shadow)
            self.live.audit.append(*self._gate_record(name, plan, who, before))
            return
        self._states[name] = RolloutState("running", 0, self.clock())
        self._set_step(name, route, plan, 0, who)

    async def begin(self, name: str, who: str) -> None:
        """Start a rollout; its first step (or its shadow gate) is written to the control store when there is one,
        and a failed write (UNAVAILABLE) leaves no rollout behind."""
        if not self._shared:
            self.start(name, who)
            return
        route, plan = self._plan(name)
        if plan.require_shadow:
            gated = RolloutState("running", 0, self.clock(), gate=plan.require_shadow)
            record = self._gate_record(name, plan, who, self.state(name).state)
            await self.live.change_rollouts(self._put(name, gated), [record])
            return
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
        judgement: Judgement | None = None, records: tuple = (),
    ) -> None:  # fmt: skip
        weights, reason = self._step_weights(route, plan, step)
        if judgement is not None:
            reason = f"{reason}; {judgement.describe()}"
        rollouts = None if state is None else self._put(name, state)
        with self._own_change(name):
            await self.live.change_weights(name, weights, who, "rollout_step", reason, rollouts, records)
        self.stats.forget(name, plan.canary)
        self.stats.forget(name, route.baseline.name)

    async def evaluate(self) -> None:
        """One pass over running rollouts: roll back a breach (or a step that could not be judged in time), advance
        a healthy step whose interval is over, complete at the last step."""
        if self._shared:
            if not await self._lead():
                return
            names = [name for name, state in self._states.items() if state.state == "running"]
            remote = await self._remote_stats() if names else []
            for name in names:
                await self._evaluate_route(name, remote)
            return
        for name in list(self._states):
            await self._evaluate_route(name, None)

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

    def _summary(
        self, name: str, variant: str, since: float, remote: Sequence[list[dict]] | None
    ) -> WindowSummary:
        """This gateway's outcomes and (with a control store, `remote` given) the other gateways' published ones,
        merged (their starts are wall times)."""
        if remote is None:
            return self.stats.summary(name, variant, since=since)
        extra = exported_buckets(remote, name, variant, self.clock() - self.wall())
        return self.stats.summary(name, variant, since=since, extra=extra)

    # -- quality, from the monitor service --------------------------------------------------------------------
    async def _ask(self, name: str, baseline: str, canary: str, since: float, quality: RolloutQuality,
                   alpha: float, paired: bool) -> tuple[tuple[Comparison, ...] | None, str]:  # fmt: skip
        """The monitor's comparisons of `canary` with `baseline` since `since` (wall time), or None and why."""
        if self.compare is None:
            return None, NO_MONITOR
        request = monitor_pb2.CompareRequest(
            route=name, baseline=baseline, canary=canary, since=since, alpha=alpha, paired=paired,
            criteria=[monitor_pb2.Criterion(metric=metric, limit=limit) for metric, limit in quality.criteria],
        )  # fmt: skip
        try:
            reply = await asyncio.wait_for(self.compare(request), self.compare_timeout_s)
        except TimeoutError:
            return None, f"the monitor service did not answer within {self.compare_timeout_s:g} s"
        except MeshError as exc:
            return None, f"the monitor service could not compare: {exc.message}"
        except Exception as exc:  # noqa: BLE001 - a failed look makes the step wait; it never stops the judge
            if self._throttle(f"compare {name}") is not None:
                log.exception("quality comparison failed", extra={"route": name})
            return None, f"the monitor service could not compare: {type(exc).__name__}"
        return tuple(comparison_from_proto(c, alpha, quality.min_labels) for c in reply.comparisons), ""

    async def _quality(self, name: str, route: Route, plan: Rollout,
                       state: RolloutState) -> tuple[tuple[Comparison, ...] | None, str]:  # fmt: skip
        """The quality comparisons of the step (or shadow gate) running since `state.step_started`: asked anew at
        most every `compare_every_s` (and whenever the window changed)."""
        if plan.quality is None:
            return None, ""
        since = self.wall() - (self.clock() - state.step_started)
        window = (state.step, state.gate, round(since))
        last = self._looks.get(name)
        if last is not None and last.window == window and self.clock() - last.at < self.compare_every_s:
            return last.found, last.note
        baseline = route.primary.name if state.gate else route.baseline.name
        found, note = await self._ask(name, baseline, state.gate or plan.canary, since, plan.quality,
                                      comparison_alpha(plan), paired=bool(state.gate))  # fmt: skip
        self._looks[name] = QualityLook(window, self.clock(), found, note)
        return found, note

    async def refresh_shadows(self) -> None:
        """Compare every shadow of a route with quality criteria against its primary variant (paired: the same
        requests), over the last SHADOW_WINDOW_S; shown by the admin API and Prometheus. Each at most every
        `compare_every_s`. Every replica asks for itself (a read: nothing is written)."""
        now = self.clock()
        seen = set()
        for name, route in self.live.routes.items():
            quality = shadow_criteria(route)
            if quality is None:
                continue
            alpha = quality.alpha / len(quality.criteria)
            for shadow in route.shadows:
                key = (name, shadow.variant)
                seen.add(key)
                last = self._shadow_looks.get(key)
                if last is not None and now - last.at < self.compare_every_s:
                    continue
                since = self.wall() - SHADOW_WINDOW_S
                found, note = await self._ask(
                    name, route.primary.name, shadow.variant, since, quality, alpha, True
                )
                self._shadow_looks[key] = QualityLook((shadow.variant, since), now, found, note)
        for gone in set(self._shadow_looks) - seen:
            del self._shadow_looks[gone]

    # -- one evaluation -----------------------------------------------------------------------------------------
    async def _judgement(self, name: str, route: Route, plan: Rollout, state: RolloutState,
                         remote: Sequence[list[dict]] | None) -> Judgement:  # fmt: skip
        """Judge the step (or shadow gate) running since `state.step_started`; with a control store (`remote`
        given) on every gateway's outcomes."""
        quality, note = await self._quality(name, route, plan, state)
        elapsed = self.clock() - state.step_started
        if state.gate:
            nothing = Window(state.gate, 0, 0, 0.0), Window(route.primary.name, 0, 0, 0.0)
            return assess(plan, state.step, *nothing, self.wall(), elapsed_s=elapsed, quality=quality,
                          quality_note=note, shadow=state.gate)  # fmt: skip
        canary = self._summary(name, plan.canary, state.step_started, remote)
        baseline = self._summary(name, route.baseline.name, state.step_started, remote)
        return assess(plan, state.step, Window.of(plan.canary, canary), Window.of(route.baseline.name, baseline),
                      self.wall(), elapsed_s=elapsed, quality=quality, quality_note=note)  # fmt: skip

    async def _evaluate_route(self, name: str, remote: Sequence[list[dict]] | None) -> None:
        # Read the state now, not from a snapshot taken before an earlier route's rollback was awaited.
        state = self.state(name)
        if state.state != "running":
            return
        route = self.live.routes.get(name)
        if route is None or route.rollout is None:
            await self._gone(name, state)
            return
        plan = route.rollout
        judgement = await self._judgement(name, route, plan, state, remote)
        now = self.state(name)
        if (now.state, now.step, now.gate) != (state.state, state.step, state.gate):
            return  # changed while the monitor answered (stopped by hand, paused): this judgement is of the past
        # a step at 100 % (a plan of [100]): no baseline traffic is left to compare with
        if not state.gate and promotes(plan, state.step):
            await self._complete(name, state, plan, judgement, promoted=True)
            return
        action = next_action(plan, judgement, self.clock() - state.step_started)
        if action == "rollback":
            await self._roll_back(name, state, judgement)
        elif action == "wait":
            await self._keep(name, state, judgement)
        elif state.gate:
            await self._advance(name, route, plan, state, judgement, 0)
        elif state.step + 1 == len(plan.steps):  # the last step, below 100 %, judged healthy
            await self._complete(name, state, plan, judgement, promoted=False)
        else:
            await self._advance(name, route, plan, state, judgement, state.step + 1)

    async def _gone(self, name: str, state: RolloutState) -> None:
        """Stop a rollout whose route or plan is gone (every change through LiveRoutes stops it first: this only
        guards against one that did not)."""
        reason = "the route or its rollout plan is gone"
        if not self._shared:
            self.stop(name, WHO, reason)
            return
        record = (WHO, "rollout_stopped", name, {"state": state.state, "step": state.step}, {"state": "stopped"},
                  reason)  # fmt: skip
        await self.live.change_rollouts(
            self._put(name, replace(state, state="stopped", last_reason=reason), "running"), [record]
        )

    async def _roll_back(self, name: str, state: RolloutState, judgement: Judgement) -> None:
        rolled_back = replace(state, state="rolled_back", last_reason=judgement.reason, judgement=judgement)
        reason = f"{judgement.reason}; {judgement.describe()}"
        if self._shared:
            with self._own_change(name):
                await self.live.rollback(name, WHO, reason, self._put(name, rolled_back, "running"))
        else:
            self._states[name] = rolled_back
            with self._own_change(name):
                await self.live.rollback(name, WHO, reason)
        log.warning("canary rolled back", extra={"route": name, "reason": judgement.reason})

    async def _keep(self, name: str, state: RolloutState, judgement: Judgement) -> None:
        """A judgement that decided nothing: kept (and, with a control store, shared now and then)."""
        if self._shared:
            await self._write_judgement(name, state, judgement)
        else:
            self._states[name] = replace(state, judgement=judgement)

    async def _advance(self, name: str, route: Route, plan: Rollout, state: RolloutState, judgement: Judgement,
                       step: int) -> None:  # fmt: skip
        """Step up (or out of the shadow gate) to `step`; reaching 100 % completes the rollout in the same go."""
        new = replace(state, step=step, step_started=self.clock(), judgement=judgement, gate="")
        records: tuple = ()
        if promotes(plan, step):
            new, record = self._completion(name, state, plan, judgement, promoted=True)
            new = replace(new, step=step, gate="")
            records = (record,)
        if self._shared:
            await self._step(name, route, plan, step, WHO, new, judgement, records)
            return
        self._states[name] = new
        self._set_step(name, route, plan, step, WHO, judgement)
        for record in records:
            self.live.audit.append(*record)

    @staticmethod
    def _completion(name: str, state: RolloutState, plan: Rollout, judgement: Judgement,
                    promoted: bool) -> tuple[RolloutState, tuple]:  # fmt: skip
        """The completed state and its audit record (who, action, route, before, after, reason)."""
        weight = plan.steps[-1]
        reason = (f"canary promoted at {weight}% (no baseline traffic left to compare with)" if promoted
                  else f"canary healthy at {weight}%")  # fmt: skip
        done = replace(state, state="completed", last_reason=reason, judgement=judgement)
        record = (WHO, "rollout_completed", name, {"state": state.state, "step": state.step},
                  {"state": "completed"}, f"{reason}; {judgement.describe()}")  # fmt: skip
        return done, record

    async def _complete(self, name: str, state: RolloutState, plan: Rollout, judgement: Judgement,
                        promoted: bool) -> None:  # fmt: skip
        done, record = self._completion(name, state, plan, judgement, promoted)
        if self._shared:
            await self.live.change_rollouts(self._put(name, done, "running"), [record])
        else:
            self._states[name] = done
            self.live.audit.append(*record)

    async def _write_judgement(self, name: str, state: RolloutState, judgement: Judgement) -> None:
        """Share a judgement that decided nothing, at most every JUDGEMENT_WRITE_S (a store write each)."""
        last = state.judgement
        if last is not None and last.step == judgement.step and judgement.at - last.at < JUDGEMENT_WRITE_S:
            return
        encoded = self._encode(replace(state, judgement=judgement))["judgement"]

        def put(rollouts: dict) -> dict:
            current = rollouts.get(name)
            if (
                current is None or current.get("state") != "running" or current.get("step") != judgement.step
                or current.get("gate", "") != state.gate
            ):  # fmt: skip
                return rollouts  # changed meanwhile (stopped, stepped): this judgement is of the past
            return {**rollouts, name: {**current, "judgement": encoded}}

        await self.live.change_rollouts(put, [])

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except MeshError as exc:  # e.g. the control store is down: say so once in a while, not every tick
                if self._throttle("mesh") is not None:
                    log.warning("rollout evaluation failed", extra={"error": exc.message})
            except Exception:  # noqa: BLE001 - the controller must outlive a bad tick
                log.exception("rollout evaluation failed")
            try:
                await self.refresh_shadows()
            except Exception:  # noqa: BLE001 - showing shadows' quality must never stop the judge
                if self._throttle("shadows") is not None:
                    log.exception("shadow quality comparison failed")
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
