"""The rollout controller judging quality: an injected clock over real LiveRoutes and a fake monitor `compare`. A
step waits for enough labelled predictions, is rolled back once its longest wait has passed, is rolled back on a
quality breach that names the metric (while errors and p99 alone would have promoted it), steps up on a pass, and a
required shadow gates the first step. Without a monitor, or while it fails, the plan waits and says why."""

from __future__ import annotations

import asyncio
import math

import pytest
import yaml

from gateway.control.audit import AuditLog
from gateway.control.plane import SqliteStore
from gateway.rollout.canary import NO_MONITOR, RolloutController
from gateway.rollout.judgement import comparison_alpha
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import parse_routes
from gateway.routing.stats import VariantStats
from meshserve.core.errors import ErrorCode, MeshError
from meshserve.monitor.v1 import monitor_pb2

QUALITY = {
    "min_labels": 100,
    "max_wait_s": 60,
    "alpha": 0.05,
    "max_auc_decrease": 0.01,
    "max_log_loss_ratio": 1.05,
}
PLAN = {"canary": "canary", "steps": [10, 50, 100], "interval_s": 5, "min_requests": 5, "quality": QUALITY}
START = 1000.0
WALL = 1.7e9  # the wall clock runs ahead of the monotonic one: Compare's `since` is a wall time


def spec(**plan) -> dict:
    return {
        "routes": {
            "a": {
                "variants": [
                    {"name": "stable", "model": "fraud", "version": "1", "weight": 100},
                    {"name": "canary", "model": "fraud", "version": "3", "weight": 0},
                ],
                "shadows": [{"variant": "canary", "percent": 100}],
                "rollout": {**PLAN, **plan},
            }
        }
    }


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + WALL


def comparison(metric: str, verdict: str, labels: int = 500, **values) -> monitor_pb2.Comparison:
    figures = {
        "auc": dict(canary_value=0.742, baseline_value=0.781, estimate=-0.039, lower=-0.061, upper=-0.017,
                    limit=-0.01, e_value=4.2e3),
        "log_loss": dict(canary_value=0.41, baseline_value=0.40, estimate=1.025, lower=0.98, upper=1.03, limit=1.05,
                         e_value=0.2),
    }[metric]  # fmt: skip
    return monitor_pb2.Comparison(
        metric=metric,
        verdict=verdict,
        canary_labels=labels,
        baseline_labels=10 * labels,
        **{**figures, **values},
    )


class Monitor:
    """A fake monitor service: answers each Compare with `answer` (or raises `fails`), and keeps the requests."""

    def __init__(self, *answer: monitor_pb2.Comparison) -> None:
        self.answer = list(answer)
        self.fails: Exception | None = None
        self.asked: list[monitor_pb2.CompareRequest] = []

    async def compare(self, request: monitor_pb2.CompareRequest) -> monitor_pb2.CompareResponse:
        self.asked.append(request)
        if self.fails is not None:
            raise self.fails
        return monitor_pb2.CompareResponse(comparisons=self.answer)


def mesh(tmp_path, monitor: Monitor | None, **plan):
    routes = spec(**plan)
    (tmp_path / "routes.yaml").write_text(yaml.safe_dump(routes))
    clock = Clock()
    live = LiveRoutes(
        parse_routes(routes, "test"), tmp_path / "routes.yaml", AuditLog(tmp_path / "audit.jsonl")
    )
    stats = VariantStats(clock=clock)
    compare = None if monitor is None else monitor.compare
    controller = RolloutController(
        live, stats, clock=clock, wall=clock.wall, compare=compare, compare_every_s=1.0
    )
    return live, stats, controller, clock


def healthy_traffic(stats: VariantStats, n: int = 20) -> None:
    for _ in range(n):
        stats.record("a", "stable", True, 0.01)
        stats.record("a", "canary", True, 0.01)


def weights(live: LiveRoutes) -> dict[str, float]:
    return {v.name: v.weight for v in live.get("a").variants}


async def test_a_step_waits_for_min_labels_and_asks_the_monitor_about_its_own_window(tmp_path):
    monitor = Monitor(comparison("auc", "pass", labels=40), comparison("log_loss", "pass", labels=40))
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    state = rollouts.state("a")
    assert (state.state, state.step, state.judgement.verdict) == (
        "running",
        0,
        "waiting",
    )  # errors alone: a step
    assert "AUC waiting: 40 canary and 400 baseline labels, 100 needed on each side" in state.judgement.reason
    (asked,) = monitor.asked
    assert (asked.route, asked.baseline, asked.canary, asked.paired) == ("a", "stable", "canary", False)
    assert asked.since == START + WALL  # the step's start, as a wall time
    assert [(c.metric, c.limit) for c in asked.criteria] == [("auc", 0.01), ("log_loss", pytest.approx(1.05))]
    # alpha 5 % over 2 judged steps x (error rate, AUC, log loss) and each shadow-gate criterion: none here
    assert asked.alpha == pytest.approx(0.05 / 6) == comparison_alpha(rollouts.live.get("a").rollout)
    shown = {c.metric: c for c in state.judgement.comparisons}
    assert set(shown) == {"error rate", "AUC", "log loss"}
    assert (
        shown["AUC"].verdict == "waiting"
        and shown["AUC"].canary == 0.742
        and shown["AUC"].alpha == asked.alpha
    )
    # the monitor is asked again only after compare_every_s, and anew for the next step's window
    await rollouts.evaluate()
    assert len(monitor.asked) == 1
    clock.now += 1
    monitor.answer = [comparison("auc", "pass", labels=200, estimate=0.002, lower=-0.008, upper=0.012),
                      comparison("log_loss", "pass", labels=200)]  # fmt: skip
    await rollouts.evaluate()
    assert (rollouts.state("a").step, len(monitor.asked)) == (1, 2)
    assert weights(live) == {"stable": 50, "canary": 50}
    step_entry = live.audit.tail(1)[0]
    assert step_entry.reason.startswith("step 2/3: canary at 50.0%; healthy at step 1")
    assert (
        "AUC pass: canary 0.7420, baseline 0.7810, difference +0.0020 in [-0.0080, +0.0120]"
        in step_entry.reason
    )
    assert (
        "log loss pass: canary 0.4100, baseline 0.4000, ratio x1.025 in [x0.980, x1.030]" in step_entry.reason
    )
    clock.now += 1
    await rollouts.evaluate()
    assert monitor.asked[-1].since == pytest.approx(START + 11 + WALL)  # the second step's own window


async def test_a_quality_breach_rolls_back_naming_the_metric_where_errors_and_p99_alone_would_promote(
    tmp_path,
):
    monitor = Monitor(comparison("auc", "breach"), comparison("log_loss", "undecided"))
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    state = rollouts.state("a")
    assert state.state == "rolled_back" and weights(live) == {"stable": 100, "canary": 0}
    level = f"{100 * (1 - 0.05 / 6):.4g}"
    assert state.last_reason == (
        f"canary AUC 0.742 is below stable 0.781 by more than 0.01 (anytime-valid {level} % bounds on the difference "
        "[-0.0610, -0.0170], e-value 4.2e+03)"
    )
    rollback = live.audit.tail(1)[0]
    assert rollback.action == "rollback" and rollback.reason.startswith(
        state.last_reason + "; breach at step 1"
    )
    assert (
        "error rate pass" in rollback.reason or "error rate undecided" in rollback.reason
    )  # errors were fine
    # the same traffic, judged on errors and p99 alone, steps up
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    live2, stats2, plain, clock2 = mesh(plain_dir, None, quality=None)
    plain.start("a", "alice")
    clock2.now += 10
    healthy_traffic(stats2)
    await plain.evaluate()
    assert (plain.state("a").state, plain.state("a").step) == ("running", 1)


async def test_log_loss_over_its_ratio_is_a_breach_too(tmp_path):
    monitor = Monitor(
        comparison("auc", "pass"), comparison("log_loss", "breach", lower=1.07, upper=1.2, estimate=1.12)
    )
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    reason = rollouts.state("a").last_reason
    assert reason.startswith("canary log loss 0.4100 is more than 1.05x stable's 0.4000 (anytime-valid ")
    assert "bounds on the ratio [x1.070, x1.200]" in reason


async def test_a_step_not_judged_within_its_longest_wait_is_rolled_back_saying_why(tmp_path):
    monitor = Monitor(comparison("auc", "undecided", estimate=-0.005, lower=-0.02, upper=0.01),
                      comparison("log_loss", "pass"))  # fmt: skip
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    for _ in range(59):
        clock.now += 1
        healthy_traffic(stats, 1)
        await rollouts.evaluate()
    state = rollouts.state("a")
    assert (state.state, state.judgement.verdict) == ("running", "undecided")
    assert state.judgement.reason.startswith(
        "AUC not yet shown within its limit: AUC undecided: canary 0.7420"
    )
    clock.now += 1
    await rollouts.evaluate()
    state = rollouts.state("a")
    assert state.state == "rolled_back" and state.judgement.verdict == "expired"
    assert state.last_reason.startswith(
        "step 1 could not be judged within 60 s: AUC not yet shown within its limit: AUC undecided"
    )
    assert "[-0.0200, +0.0100]" in state.last_reason and weights(live) == {"stable": 100, "canary": 0}


async def test_without_a_monitor_quality_waits_and_says_why_then_expires(tmp_path):
    live, stats, rollouts, clock = mesh(tmp_path, None)
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    judged = rollouts.state("a").judgement
    assert judged.verdict == "waiting" and judged.reason == f"AUC: {NO_MONITOR}; log loss: {NO_MONITOR}"
    clock.now += 60
    await rollouts.evaluate()
    assert rollouts.state("a").state == "rolled_back"
    assert (
        rollouts.state("a").last_reason
        == f"step 1 could not be judged within 60 s: AUC: {NO_MONITOR}; log loss: {NO_MONITOR}"
    )


async def test_a_failing_monitor_makes_the_step_wait_and_never_stops_the_judge(tmp_path, caplog):
    monitor = Monitor()
    monitor.fails = MeshError("monitor service unavailable", ErrorCode.UNAVAILABLE)
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    assert rollouts.state("a").judgement.reason.startswith(
        "AUC: the monitor service could not compare: monitor service unavailable"
    )
    monitor.fails = RuntimeError("a bug")
    clock.now += 2
    await rollouts.evaluate()  # logged (throttled), not raised
    assert "could not compare: RuntimeError" in rollouts.state("a").judgement.reason
    hung = asyncio.Event()

    async def never_answers(request):
        await hung.wait()

    rollouts.compare, rollouts.compare_timeout_s = never_answers, 0.01
    clock.now += 2
    await rollouts.evaluate()  # bounded: a slow monitor never holds the judge past its lease
    assert "AUC: the monitor service did not answer within 0.01 s" in rollouts.state("a").judgement.reason
    monitor.fails = None
    monitor.answer = [comparison("auc", "pass"), comparison("log_loss", "pass")]
    rollouts.compare = monitor.compare
    clock.now += 2
    await rollouts.evaluate()
    assert rollouts.state("a").step == 1


async def test_a_required_shadow_must_pass_on_the_same_requests_before_the_canary_gets_traffic(tmp_path):
    monitor = Monitor(comparison("auc", "undecided"), comparison("log_loss", "pass"))
    live, stats, rollouts, clock = mesh(tmp_path, monitor, require_shadow="canary")
    rollouts.start("a", "alice")
    assert weights(live) == {"stable": 100, "canary": 0}  # gated: no canary traffic yet
    started = live.audit.tail(1)[0]
    assert (started.action, started.after) == ("rollout_started", {"state": "running", "gate": "canary"})
    assert started.reason == "shadow canary must pass on quality before step 1/3 (canary at 10.0%)"
    clock.now += 2
    await rollouts.evaluate()
    state = rollouts.state("a")
    assert (state.state, state.gate, state.judgement.verdict, state.judgement.shadow) == (
        "running", "canary", "undecided", "canary",
    )  # fmt: skip
    asked = monitor.asked[-1]
    assert (asked.paired, asked.baseline, asked.canary) == (True, "stable", "canary")
    # 2 judged steps x 3 criteria, and the gate's 2 quality criteria
    assert asked.alpha == pytest.approx(0.05 / 8)
    assert [c.metric for c in state.judgement.comparisons] == [
        "AUC",
        "log loss",
    ]  # no error rate for a shadow
    monitor.answer = [
        comparison("auc", "pass", estimate=0.001, lower=-0.009, upper=0.011),
        comparison("log_loss", "pass"),
    ]
    clock.now += 2
    await rollouts.evaluate()  # passed: the first step starts now (the gate needs no interval)
    state = rollouts.state("a")
    assert (state.gate, state.step, weights(live)) == ("", 0, {"stable": 90, "canary": 10})
    entry = live.audit.tail(1)[0]
    assert entry.action == "rollout_step"
    assert entry.reason.startswith(
        "step 1/3: canary at 10.0%; healthy: shadow canary against stable: AUC pass"
    )


async def test_a_required_shadow_that_breaches_rolls_back_before_any_caller_sees_the_canary(tmp_path):
    monitor = Monitor(comparison("auc", "breach"), comparison("log_loss", "pass"))
    live, stats, rollouts, clock = mesh(tmp_path, monitor, require_shadow="canary")
    rollouts.start("a", "alice")
    clock.now += 2
    await rollouts.evaluate()
    state = rollouts.state("a")
    assert state.state == "rolled_back" and weights(live) == {"stable": 100, "canary": 0}
    assert state.last_reason.startswith("shadow canary AUC 0.742 is below stable 0.781 by more than 0.01")


async def test_shadows_of_a_route_with_quality_criteria_are_compared_paired_for_status(tmp_path):
    monitor = Monitor(comparison("auc", "pass"), comparison("log_loss", "pass"))
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    await rollouts.refresh_shadows()
    look = rollouts.shadow_looks[("a", "canary")]
    assert [c.metric for c in look.found] == ["AUC", "log loss"] and look.note == ""
    asked = monitor.asked[-1]
    assert (asked.paired, asked.baseline, asked.canary) == (True, "stable", "canary")
    assert asked.since == pytest.approx(clock.wall() - 3600)
    await rollouts.refresh_shadows()
    assert len(monitor.asked) == 1  # at most every compare_every_s


async def test_quality_figures_reach_every_replica_through_the_control_store(tmp_path):
    store = SqliteStore(f"sqlite:///{tmp_path}/control.db", tmp_path / "control.db")
    clock = Clock()
    monitor = Monitor(comparison("auc", "undecided"), comparison("log_loss", "pass"))
    replicas = []
    for name in ("a", "b"):
        live = LiveRoutes(parse_routes(spec(), "test"), None, AuditLog(tmp_path / f"{name}.jsonl"))
        live.store = live.audit.shared = store
        await live.sync()
        stats = VariantStats(clock=clock)
        replicas.append((live, stats, RolloutController(live, stats, clock=clock, wall=clock.wall,
                                                        compare=monitor.compare)))  # fmt: skip
    (a, a_stats, judge), (b, _, other) = replicas
    try:
        await judge.evaluate()  # takes the lease
        await other.begin("a", "alice")
        await a.sync()
        clock.now += 10
        healthy_traffic(a_stats)
        await judge.evaluate()
        await b.sync()
        shown = {c.metric: c for c in other.state("a").judgement.comparisons}
        assert shown["AUC"].verdict == "undecided" and shown["AUC"].lower == pytest.approx(-0.061)
        assert not math.isnan(shown["error rate"].lower) and shown["log loss"].verdict == "pass"
    finally:
        await store.close()


async def test_quality_figures_and_bounds_are_gauges_for_rollouts_and_shadows(tmp_path):
    from tests.unit.test_canary_judgement import scraped
    from tests.unit.test_route_metrics import collector

    monitor = Monitor(comparison("auc", "breach"), comparison("log_loss", "waiting", labels=0))
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    rollouts.start("a", "alice")
    await rollouts.refresh_shadows()
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()
    metrics = scraped(collector(live, stats, rollouts))
    at = 'metric="auc",route="a"'
    prefix = "meshserve_gateway_rollout_quality"
    assert metrics[f'{prefix}{{{at},side="canary"}}'] == 0.742
    assert metrics[f'{prefix}{{{at},side="baseline"}}'] == 0.781
    assert metrics[f"{prefix}_estimate{{{at}}}"] == -0.039 and metrics[f"{prefix}_limit{{{at}}}"] == -0.01
    assert metrics[f'{prefix}_bound{{bound="lower",{at}}}'] == -0.061
    assert metrics[f'{prefix}_bound{{bound="upper",{at}}}'] == -0.017
    assert metrics[f"{prefix}_e_value{{{at}}}"] == 4200 and metrics[
        f"{prefix}_alpha{{{at}}}"
    ] == pytest.approx(0.05 / 6)
    assert metrics[f'{prefix}_samples{{{at},side="canary"}}'] == 500
    assert metrics[f'{prefix}_verdict{{{at},verdict="breach"}}'] == 1
    assert metrics[f'{prefix}_verdict{{{at},verdict="pass"}}'] == 0
    errors = 'metric="error_rate",route="a"'
    assert (
        metrics[f'{prefix}{{{errors},side="canary"}}'] == 0.0
        and f'{prefix}_bound{{bound="upper",{errors}}}' in metrics
    )
    # a comparison still waiting has no bounds yet: absent, not NaN
    assert not any('metric="log_loss"' in key and "_bound" in key for key in metrics)
    assert metrics['meshserve_gateway_rollout_verdict{route="a",verdict="breach"}'] == 1
    shadow = 'metric="auc",route="a"'
    assert metrics[f'meshserve_gateway_shadow_quality{{{shadow},side="canary",variant="canary"}}'] == 0.742
    assert (
        metrics[f'meshserve_gateway_shadow_quality_bound{{bound="lower",{shadow},variant="canary"}}']
        == -0.061
    )


def test_the_admin_api_carries_every_comparison_of_a_judgement():
    from gateway.api.admin import to_judgement
    from gateway.rollout.judgement import Window, assess
    from gateway.routing.routes import Rollout

    plan = Rollout(**{**PLAN, "require_shadow": None})
    judged = assess(
        plan, 0, Window("canary", 3, 0, 0.01), Window("stable", 3, 0, 0.01), 5.0, quality_note=NO_MONITOR
    )
    message = to_judgement(judged)
    (errors,) = message.comparisons  # no quality comparisons without a monitor: the reason says why
    assert (errors.metric, errors.verdict, errors.canary_samples, errors.min_samples) == (
        "error rate",
        "waiting",
        3,
        5,
    )
    assert math.isnan(errors.lower) and errors.alpha == pytest.approx(0.05 / 6 / 2)  # its share, over 2 tests
    assert (
        message.reason
        == f"waiting for 5 requests on each side (canary 3, baseline 3); AUC: {NO_MONITOR}; log loss: {NO_MONITOR}"
    )


async def test_a_manual_change_while_the_monitor_answers_is_not_overwritten(tmp_path):
    monitor = Monitor(comparison("auc", "pass"), comparison("log_loss", "pass"))
    live, stats, rollouts, clock = mesh(tmp_path, monitor)
    answer = monitor.compare

    async def meanwhile(request):  # bob holds the canary at 30 % while the judge waits for the monitor
        live.set_weights("a", {"stable": 70, "canary": 30}, "bob", reason="hold")
        return await answer(request)

    rollouts.compare = meanwhile
    rollouts.start("a", "alice")
    clock.now += 10
    healthy_traffic(stats)
    await rollouts.evaluate()  # the judgement would step up; the rollout was stopped meanwhile
    assert rollouts.state("a").state == "stopped" and weights(live) == {"stable": 70, "canary": 30}
    assert [e.action for e in live.audit.tail(10)] == ["rollout_step", "set_weights", "rollout_stopped"]
