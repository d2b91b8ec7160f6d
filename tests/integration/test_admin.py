"""The admin API on a gateway of its own (in this process, real gRPC), in front of the session's real services:
weights, promote/rollback, audit log, reload (bad file keeps serving), shadows and automated rollouts."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
import numpy as np
import pytest

from meshserve.admin.v1 import admin_pb2
from meshserve.core.auth import ApiKeyStore
from meshserve.gateway.v1 import gateway_pb2
from tests.helpers import feature_vector, score_directly, scrape
from tests.integration.gateways import in_process_gateway

ROUTES = """
routes:
  fraud:
    cache: {enabled: false}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
  shadowed:
    cache: {enabled: false}
    shadows: [{variant: candidate, percent: 100}]
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: candidate, model: fraud, version: "2", weight: 0}
  bad-shadow:
    cache: {enabled: false}
    shadows: [{variant: broken, percent: 100}, {variant: sleepy, percent: 100}]
    faults:
      - {variant: broken, abort_percent: 100}
      - {variant: sleepy, delay_ms: 3000, delay_percent: 100}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: broken, model: fraud, version: "2", weight: 0}
      - {name: sleepy, model: fraud, version: "2", weight: 0}
  rollout:
    cache: {enabled: false}
    fallback: [stable]
    rollout: {canary: canary, steps: [20, 50, 100], interval_s: 1.0, min_requests: 10}
    faults:
      - {variant: canary, abort_percent: 60}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
  flaky-canary:
    cache: {enabled: false}
    fallback: [stable]
    retry: {max_attempts: 3, budget_ratio: 0.1}
    faults:
      - {variant: canary, abort_percent: 100}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 50}
      - {name: canary, model: fraud, version: "2", weight: 50}
  healthy-rollout:
    cache: {enabled: false}
    rollout: {canary: canary, steps: [30, 100], interval_s: 0.5, min_requests: 5, max_p99_ratio: 50}
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
"""


@pytest.fixture
async def gateway(mesh, tmp_path):
    """A gateway whose admin API knows alice and bob by API key (role admin); a call without a credential is the
    anonymous caller's (this gateway requires none)."""
    store = ApiKeyStore(tmp_path / "api-keys.json")
    keys = {name: store.create(name, ["admin"]) for name in ("alice", "bob")}
    async with in_process_gateway(mesh, tmp_path, ROUTES, auth_api_keys_file=store.path) as gw:
        gw.as_user = {name: (("authorization", f"Bearer {key}"),) for name, key in keys.items()}
        yield gw


async def test_weights_promote_and_rollback_change_traffic_and_are_audited(gateway):
    who = gateway.as_user["alice"]
    await gateway.admin.SetWeights(
        admin_pb2.SetWeightsRequest(route="fraud", weights={"stable": 50, "canary": 50}),
        metadata=who,
        timeout=5,
    )
    variants = {(await gateway.predict("fraud", amount=float(n))).variant for n in range(60)}
    assert variants == {"stable", "canary"}
    status = await gateway.admin.Promote(admin_pb2.PromoteRequest(route="fraud", variant="canary"), timeout=5)
    assert {v.name: v.weight for v in status.variants} == {"stable": 0, "canary": 100}
    assert {(await gateway.predict("fraud", amount=float(n))).variant for n in range(10)} == {"canary"}
    await gateway.admin.Rollback(
        admin_pb2.RollbackRequest(route="fraud", reason="drill"), metadata=who, timeout=5
    )
    assert {(await gateway.predict("fraud", amount=float(n))).variant for n in range(10)} == {"stable"}

    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert [(e.who, e.action) for e in audit] == [
        ("alice", "set_weights"),
        ("anonymous", "promote"),
        ("alice", "rollback"),
    ]
    assert json.loads(audit[0].before) == {"stable": 100, "canary": 0}
    assert json.loads(audit[0].after) == {"stable": 50, "canary": 50}
    assert audit[2].reason == "drill"
    # the log is a file that outlives the process
    lines = (gateway.routes_file.parent / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in lines] == ["set_weights", "promote", "rollback"]


async def test_weights_are_shares_scaled_to_sum_to_100(gateway):
    status = await gateway.admin.SetWeights(
        admin_pb2.SetWeightsRequest(route="fraud", weights={"stable": 90, "canary": 20}), timeout=5
    )
    weights = {v.name: v.weight for v in status.variants}
    assert weights == pytest.approx({"stable": 81.818, "canary": 18.182}, abs=0.001)
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert json.loads(audit[-1].after) == pytest.approx(weights)  # stored and audited as served


async def test_bad_weights_are_refused_and_change_nothing(gateway):
    for weights, field in (
        ({"stable": 0, "canary": 0}, "weights:"),
        ({"ghost": 10}, "weights.ghost:"),
        ({"stable": -1}, "weights.stable:"),
        ({"canary": float("nan")}, "weights.canary:"),
        ({}, "weights:"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await gateway.admin.SetWeights(
                admin_pb2.SetWeightsRequest(route="fraud", weights=weights), timeout=5
            )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failure.value.details().startswith(field), failure.value.details()
    assert {v.name: v.weight for v in (await gateway.status("fraud")).variants} == {
        "stable": 100,
        "canary": 0,
    }


async def test_reload_of_a_bad_file_keeps_serving_and_a_good_one_applies_without_dropping_requests(gateway):
    gateway.routes_file.write_text(ROUTES.replace("weight: 100}", "weight: -100}", 1))
    reply = await gateway.admin.Reload(admin_pb2.ReloadRequest(), timeout=5)
    assert not reply.applied
    assert "routes.fraud.variants.0.weight" in reply.error and "greater than or equal to 0" in reply.error
    assert (await gateway.predict("fraud")).variant == "stable"

    stop = asyncio.Event()
    # the variants each caller was answered by, in its order
    outcomes: list[list[str]] = [[] for _ in range(4)]

    async def load(mine: list[str]):
        n = 0
        while not stop.is_set():
            n += 1
            mine.append((await gateway.predict("fraud", amount=float(n))).variant)

    loaders = [asyncio.create_task(load(mine)) for mine in outcomes]
    await asyncio.sleep(0.2)
    gateway.routes_file.write_text(
        ROUTES.replace(
            'weight: 100}\n      - {name: canary, model: fraud, version: "2", weight: 0}',
            'weight: 0}\n      - {name: canary, model: fraud, version: "2", weight: 100}',
            1,
        )
    )
    reply = await gateway.admin.Reload(admin_pb2.ReloadRequest(), timeout=5)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*loaders)  # any failed request would raise here
    assert reply.applied and reply.error == ""
    for mine in outcomes:  # each caller switched once, never back (callers' answers interleave in time)
        assert mine[0] == "stable" and mine[-1] == "canary"
        assert "stable" not in mine[mine.index("canary") :]


async def test_shadow_compares_with_the_primary_and_reflects_a_planted_difference(mesh, gateway):
    accounts = [f"acct-{n:05d}" for n in range(40)]
    primary = [await gateway.predict("shadowed", account=a, amount=300.0) for a in accounts]
    assert {(p.variant, p.model_version) for p in primary} == {("stable", "1")}
    deadline = time.monotonic() + 10
    while (status := await gateway.status("shadowed")).shadows[0].compared < len(accounts):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    rows = np.vstack([feature_vector(a, amount=300.0, merchant_category=4) for a in accounts])
    v1, v2 = (
        score_directly(mesh.endpoints.triton_grpc, rows, "1"),
        score_directly(mesh.endpoints.triton_grpc, rows, "2"),
    )
    shadow = status.shadows[0]
    assert shadow.compared == len(accounts) and shadow.failed == 0
    assert shadow.mean_abs_score_diff == pytest.approx(float(np.mean(np.abs(v1 - v2))), abs=1e-5)
    assert shadow.mean_abs_score_diff > 0.001  # v1 and v2 really differ
    assert shadow.label_agreement == pytest.approx(float(np.mean((v1 >= 0.5) == (v2 >= 0.5))))
    # ...and the same comparison is exported to Prometheus
    metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{gateway.service.metrics.port}/metrics")
    labels = '{route="shadowed",variant="candidate"}'
    assert metrics[f"meshserve_gateway_shadow_compared_total{labels}"] == len(accounts)
    assert metrics[f"meshserve_gateway_shadow_mean_abs_score_diff{labels}"] == pytest.approx(
        shadow.mean_abs_score_diff
    )
    assert metrics['meshserve_gateway_variant_weight{route="shadowed",variant="stable"}'] == 100


async def test_failing_or_slow_shadow_changes_nothing_for_callers(gateway):
    started = time.monotonic()
    answers = [await gateway.predict("bad-shadow", amount=float(n)) for n in range(20)]
    elapsed = time.monotonic() - started
    assert all(a.variant == "stable" and a.tier == gateway_pb2.PRIMARY for a in answers)
    assert elapsed < 3.0  # a 3 s shadow delay never reaches callers
    deadline = time.monotonic() + 5
    while (await gateway.status("bad-shadow")).shadows[0].failed < 20:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def _drive(gateway, route: str, until, seconds: float) -> admin_pb2.RouteStatus:
    """Send traffic until `until(status)` holds (bounded), returning the last status."""
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        status = await gateway.status(route)
        if until(status):
            return status
        assert time.monotonic() < deadline, f"rollout never reached the expected state: {status.rollout}"
        await asyncio.gather(*(gateway.predict(route, amount=float(n + k)) for k in range(8)))
        n += 8


async def test_failing_canary_is_rolled_back_by_the_rollout_and_audited(gateway):
    await gateway.admin.SetRollout(
        admin_pb2.SetRolloutRequest(route="rollout", action=admin_pb2.SetRolloutRequest.START), timeout=5
    )
    status = await _drive(gateway, "rollout", lambda s: s.rollout.state != "running", seconds=15)
    assert status.rollout.state == "rolled_back"
    assert "error rate" in status.rollout.last_reason
    assert {v.name: v.weight for v in status.variants} == {"stable": 100, "canary": 0}
    judged = status.rollout.last_judgement  # the numbers that decided, with the plan's thresholds
    assert judged.verdict == "breach" and judged.reason == status.rollout.last_reason
    assert (judged.canary.variant, judged.baseline.variant) == ("canary", "stable")
    assert judged.canary.requests >= 10 and judged.canary.errors >= 1
    assert judged.canary.error_rate == pytest.approx(judged.canary.errors / judged.canary.requests)
    assert judged.canary.error_rate - judged.baseline.error_rate > judged.max_error_rate_increase == 0.02
    assert (judged.max_p99_ratio, judged.min_requests) == (2.0, 10)
    assert judged.canary.p99_seconds > 0 and abs(judged.time - time.time()) < 60
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert [(e.who, e.action) for e in audit][-1] == ("rollout", "rollback")
    assert "error rate" in audit[-1].reason
    assert f"canary canary {judged.canary.requests} requests" in audit[-1].reason
    assert "thresholds: error rate +2.0%, p99 x2, 10 requests" in audit[-1].reason
    # and in Prometheus, from the gateway's own registry
    metrics = {
        f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
        for family in gateway.service.metrics.registry.collect()
        for s in family.samples
    }
    prefix = "meshserve_gateway_rollout"
    assert metrics[
        f"{prefix}_judged_error_rate{{role=canary,route=rollout,variant=canary}}"
    ] == pytest.approx(judged.canary.error_rate)
    assert metrics[f"{prefix}_judged_requests{{role=baseline,route=rollout,variant=stable}}"] == (
        judged.baseline.requests
    )
    assert metrics[f"{prefix}_threshold{{route=rollout,threshold=max_error_rate_increase}}"] == 0.02
    assert metrics[f"{prefix}_verdict{{route=rollout,verdict=breach}}"] == 1


async def test_healthy_canary_is_stepped_up_to_full_traffic(gateway):
    await gateway.admin.SetRollout(
        admin_pb2.SetRolloutRequest(route="healthy-rollout", action=admin_pb2.SetRolloutRequest.START),
        timeout=5,
    )
    status = await _drive(gateway, "healthy-rollout", lambda s: s.rollout.state != "running", seconds=20)
    assert status.rollout.state == "completed"
    assert {v.name: v.weight for v in status.variants} == {"stable": 0, "canary": 100}
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert [e.action for e in audit] == ["rollout_step", "rollout_step", "rollout_completed"]
    assert [json.loads(e.after)["canary"] for e in audit[:2]] == [30, 100]
    # reaching 100 % is promotion (no baseline traffic is left to compare with): the judgement of step 1 decided it
    judged = status.rollout.last_judgement
    assert judged.verdict == "healthy" and judged.step == 0 and judged.canary.requests >= 5
    assert f"healthy at step 1: canary canary {judged.canary.requests} requests" in audit[-1].reason
    assert audit[-1].reason.startswith("canary promoted at 100.0% (no baseline traffic left to compare with)")
    assert [c.metric for c in judged.comparisons] == ["error rate"]  # and its anytime-valid bounds


async def test_retry_budget_and_ejection_stop_a_dead_canary_costing_attempts_then_probe_it_back(gateway):
    answers = [await gateway.predict("flaky-canary", amount=float(n)) for n in range(100)]
    assert all(a.variant == "stable" for a in answers)  # no caller saw the dead canary
    status = await gateway.status("flaky-canary")
    canary = next(v for v in status.variants if v.name == "canary")
    # ~50 requests chose the canary; with 3 attempts each and no budget or ejection that is ~150 failed attempts.
    # The retry budget (10 %) and ejection after 5 consecutive failures leave only a handful, plus probes.
    assert canary.ejected
    assert 5 <= canary.errors <= 12, canary.errors
    # the canary recovers: once its ejection runs out, a probe succeeds and it takes traffic again
    gateway.routes_file.write_text(
        gateway.routes_file.read_text().replace(
            'abort_percent: 100}\n    variants:\n      - {name: stable, model: fraud, version: "1", weight: 50}',
            'abort_percent: 0}\n    variants:\n      - {name: stable, model: fraud, version: "1", weight: 50}',
        )
    )
    assert (await gateway.admin.Reload(admin_pb2.ReloadRequest(), timeout=5)).applied
    deadline = time.monotonic() + 40
    while (await gateway.predict("flaky-canary", amount=time.monotonic())).variant != "canary":
        assert time.monotonic() < deadline, "the canary was never probed back in"
        await asyncio.sleep(0.05)
    assert not next(v for v in (await gateway.status("flaky-canary")).variants if v.name == "canary").ejected


async def test_weights_set_by_hand_stop_a_running_rollout_so_its_next_step_cannot_overwrite_them(gateway):
    who = gateway.as_user["alice"]
    await gateway.admin.SetRollout(
        admin_pb2.SetRolloutRequest(route="healthy-rollout", action=admin_pb2.SetRolloutRequest.START),
        timeout=5,
    )
    status = await gateway.admin.SetWeights(
        admin_pb2.SetWeightsRequest(route="healthy-rollout", weights={"stable": 80, "canary": 20}),
        metadata=who,
        timeout=5,
    )
    assert status.rollout.state == "stopped" and "set_weights by alice" in status.rollout.last_reason
    # traffic and time enough for several steps of the old rollout (0.5 s each, 5 requests): none is taken
    deadline = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < deadline:
        await asyncio.gather(*(gateway.predict("healthy-rollout", amount=float(n + k)) for k in range(8)))
        n += 8
    status = await gateway.status("healthy-rollout")
    assert {v.name: v.weight for v in status.variants} == {"stable": 80, "canary": 20}
    assert status.rollout.state == "stopped"
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert [(e.who, e.action) for e in audit] == [
        ("anonymous", "rollout_step"),
        ("alice", "set_weights"),
        ("alice", "rollout_stopped"),
    ]
    assert "set_weights by alice" in audit[-1].reason


async def test_a_reload_that_removes_a_running_rollouts_plan_stops_it_once(gateway, caplog):
    await gateway.admin.SetRollout(
        admin_pb2.SetRolloutRequest(route="rollout", action=admin_pb2.SetRolloutRequest.START), timeout=5
    )
    plan = "    rollout: {canary: canary, steps: [20, 50, 100], interval_s: 1.0, min_requests: 10}\n"
    assert plan in ROUTES
    gateway.routes_file.write_text(ROUTES.replace(plan, ""))
    caplog.set_level(logging.INFO, logger="gateway.rollout.canary")
    reply = await gateway.admin.Reload(admin_pb2.ReloadRequest(), metadata=gateway.as_user["bob"], timeout=5)
    assert reply.applied
    await asyncio.sleep(1.0)  # four ticks of the controller
    status = await gateway.status("rollout")
    assert status.rollout.state == "stopped" and "reload by bob" in status.rollout.last_reason
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == ["rollout stopped"]
    audit = (await gateway.admin.GetAuditLog(admin_pb2.GetAuditLogRequest(), timeout=5)).entries
    assert [(e.who, e.action, e.route) for e in audit if e.action == "rollout_stopped"] == [
        ("bob", "rollout_stopped", "rollout")
    ]
