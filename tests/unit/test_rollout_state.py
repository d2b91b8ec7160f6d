"""The rollout controller with an injected clock over real LiveRoutes: it alone owns rollout state, reads are pure
and safe while it works, and any manual change to a route stops that route's rollout once, audited."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import yaml

from gateway.control.audit import AuditLog
from gateway.rollout.canary import RolloutController
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import parse_routes
from gateway.routing.stats import VariantStats

PLAN = {"canary": "canary", "steps": [10, 50, 100], "interval_s": 5, "min_requests": 5}


def spec(plan: dict | None = PLAN) -> dict:
    route = {
        "variants": [
            {"name": "stable", "model": "fraud", "version": "1", "weight": 100},
            {"name": "canary", "model": "fraud", "version": "2", "weight": 0},
        ]
    }
    if plan is not None:
        route["rollout"] = plan
    return {"routes": {"a": route, "b": dict(route), "c": dict(route)}}


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mesh(tmp_path):
    """LiveRoutes reading a routes file, the controller and the stats it judges, all on one fake clock."""
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(spec()))
    clock = Clock()
    live = LiveRoutes(parse_routes(spec(), "test"), routes_file, AuditLog(tmp_path / "audit.jsonl"))
    stats = VariantStats(clock=clock)
    return live, stats, RolloutController(live, stats, clock=clock), clock


def audit(live: LiveRoutes) -> list[tuple[str, str, str]]:
    return [(e.who, e.action, e.route) for e in live.audit.tail(100)]


def traffic(stats: VariantStats, route: str, canary_ok: bool, n: int = 10) -> None:
    for _ in range(n):
        stats.record(route, "stable", True, 0.01)
        stats.record(route, "canary", canary_ok, 0.01)


def test_reads_never_create_entries(mesh):
    live, _, rollouts, _ = mesh
    assert rollouts.state("a").state == "none"
    assert rollouts.state("nope").state == "none"
    assert rollouts.states == {}
    snapshot = rollouts.states
    snapshot["x"] = rollouts.state("a")  # a copy: changing it changes nothing
    assert rollouts.states == {}


async def test_status_reads_while_a_rollback_is_awaited_never_break_the_pass(mesh):
    """ListRoutes during a rollback used to raise `dictionary changed size during iteration`."""
    live, stats, rollouts, clock = mesh
    rollouts.start("a", "alice")
    rollouts.start("b", "alice")
    seen = []

    async def invalidate(scopes):  # the cache call inside the controller's rollback of route a
        seen.append({name: rollouts.state(name).state for name in ("a", "b", "c", "d")})
        seen.append(dict(rollouts.states))
        await asyncio.sleep(0)

    live.invalidate = invalidate
    traffic(stats, "a", canary_ok=False)
    traffic(stats, "b", canary_ok=True)
    await rollouts.evaluate()
    assert seen[0] == {"a": "rolled_back", "b": "running", "c": "none", "d": "none"}
    assert set(rollouts.states) == {"a", "b"}  # the reads created nothing
    assert rollouts.state("b").state == "running"


async def test_a_manual_change_stops_a_running_rollout_and_the_audit_log_says_who_and_why(mesh):
    live, stats, rollouts, clock = mesh
    rollouts.start("a", "alice")
    live.set_weights("a", {"stable": 70, "canary": 30}, "bob", reason="hold at 30")
    state = rollouts.state("a")
    assert state.state == "stopped"
    assert state.last_reason == "set_weights by bob: hold at 30"
    entries = live.audit.tail(10)
    assert [(e.who, e.action) for e in entries] == [
        ("alice", "rollout_step"),
        ("bob", "set_weights"),
        ("bob", "rollout_stopped"),
    ]
    assert json.loads(json.dumps(entries[-1].before)) == {"state": "running", "step": 0}
    # its next step would have overwritten bob's weights; a stopped rollout takes no more steps
    clock.now += 10
    traffic(stats, "a", canary_ok=True)
    await rollouts.evaluate()
    assert {v.name: v.weight for v in live.get("a").variants} == {"stable": 70, "canary": 30}


@pytest.mark.parametrize(
    ("change", "outcome", "stopped_routes"),
    [
        (lambda live: live.promote("a", "canary", "bob"), "stopped", {"a"}),
        (lambda live: live.rollback("a", "bob", "p99 regression"), "rolled_back", {"a"}),
        (lambda live: live.switch_version("a", "canary", "3", "bob"), "stopped", {"a"}),
        # the file's weights differ from both rollouts' steps: a reload changes (and stops) both; c is unchanged
        (lambda live: live.reload("bob"), "stopped", {"a", "b"}),
    ],
    ids=["promote", "rollback", "switch_version", "reload"],
)
async def test_every_manual_change_stops_the_rollouts_of_the_routes_it_changes(
    mesh, change, outcome, stopped_routes
):
    live, _, rollouts, _ = mesh
    rollouts.start("a", "alice")
    rollouts.start("b", "alice")
    rollouts.pause("b")  # a paused rollout would step again on resume: it is stopped too
    await change(live)
    assert rollouts.state("a").state == outcome
    assert "by bob" in rollouts.state("a").last_reason
    stopped = [e for e in live.audit.tail(100) if e.action == "rollout_stopped"]
    assert sorted(e.route for e in stopped) == sorted(stopped_routes)  # once each
    assert all(e.who == "bob" for e in stopped)
    assert rollouts.state("b").state == ("stopped" if "b" in stopped_routes else "paused")


async def test_a_reload_stops_only_the_rollouts_of_routes_it_changes(mesh, tmp_path):
    live, _, rollouts, _ = mesh
    rollouts.start("a", "alice")
    rollouts.start("b", "alice")
    # the file as the live table stands for b (its rollout's step 1 weights), without a's plan
    file = spec()
    file["routes"]["a"] = spec(plan=None)["routes"]["a"]
    file["routes"]["b"]["variants"] = [v.model_dump() for v in live.get("b").variants]
    live.path.write_text(yaml.safe_dump(file))
    assert await live.reload("carol") == (True, "")
    assert rollouts.state("a").state == "stopped" and rollouts.state("b").state == "running"
    assert [e.route for e in live.audit.tail(100) if e.action == "rollout_stopped"] == ["a"]


async def test_a_plan_that_disappears_stops_its_rollout_once_and_the_loop_stays_quiet(mesh, caplog):
    """A reload removing a running rollout's plan used to log an error on every tick, forever."""
    live, stats, rollouts, clock = mesh
    rollouts.start("a", "alice")
    # a table swapped without an announcement (the guard for changes that do not go through LiveRoutes' methods)
    live.table = parse_routes(spec(plan=None), "test")
    caplog.set_level(logging.INFO, logger="gateway.rollout.canary")
    for _ in range(20):
        clock.now += 1
        traffic(stats, "a", canary_ok=True)
        await rollouts.evaluate()
    assert rollouts.state("a").state == "stopped"
    assert [r.getMessage() for r in caplog.records] == ["rollout stopped"]
    assert [e for e in audit(live) if e[1] == "rollout_stopped"] == [("rollout", "rollout_stopped", "a")]


async def test_the_controllers_own_steps_and_rollback_do_not_stop_it(mesh):
    live, stats, rollouts, clock = mesh
    rollouts.start("a", "alice")
    clock.now += 6
    traffic(stats, "a", canary_ok=True)
    await rollouts.evaluate()
    assert (rollouts.state("a").state, rollouts.state("a").step) == ("running", 1)
    traffic(stats, "a", canary_ok=False, n=20)
    await rollouts.evaluate()
    assert rollouts.state("a").state == "rolled_back" and "error rate" in rollouts.state("a").last_reason
    assert [e[1] for e in audit(live)] == ["rollout_step", "rollout_step", "rollback"]
