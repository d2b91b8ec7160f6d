"""`-o json` of `meshserve routes list`, `canary status` and `routes audit`: the admin API's replies as plain
JSON (numbers stay numbers, audit before/after as data), `canary weights` saying it scaled the weights, and a refused
`routes reload` as one line on stderr."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meshserve.admin.v1 import admin_pb2
from meshserve.cli import admin as cli
from meshserve.cli.app import app


def status(**weights: float) -> admin_pb2.RouteStatus:
    judged = admin_pb2.Judgement(
        time=1.5e9, step=0, verdict="healthy", max_error_rate_increase=0.02, max_p99_ratio=2, min_requests=20,
        canary=admin_pb2.JudgedWindow(variant="canary", requests=40, errors=1, error_rate=0.025, p99_seconds=0.01),
        baseline=admin_pb2.JudgedWindow(variant="stable", requests=160, errors=0, p99_seconds=0.009),
    )  # fmt: skip
    return admin_pb2.RouteStatus(
        route="fraud", sticky="entity", fallback=["stable"],
        variants=[admin_pb2.VariantStatus(name=n, model="fraud", weight=w, requests=7) for n, w in weights.items()],
        rollout=admin_pb2.RolloutStatus(state="running", canary="canary", step=0, steps=[5, 100],
                                        last_judgement=judged),
    )  # fmt: skip


@pytest.fixture
def replies(monkeypatch):
    answers = {
        "ListRoutes": admin_pb2.ListRoutesResponse(
            routes=[status(stable=95, canary=5)], routes_file="r.yaml"
        ),
        "GetAuditLog": admin_pb2.GetAuditLogResponse(
            entries=[
                admin_pb2.AuditEntry(
                    time="t",
                    who="rollout",
                    action="rollout_step",
                    route="fraud",
                    before='{"stable": 100}',
                    after='{"stable": 95}',
                    reason="step 2/2",
                )
            ]
        ),  # fmt: skip
        "SetWeights": status(stable=81.8181818, canary=18.1818182),
    }
    sent = []

    def call(target, method, request, timeout_s=10.0):
        sent.append(request)
        return answers[method]

    monkeypatch.setattr(cli, "_call", call)
    return sent


def run(app, *args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output if "json" in args else " ".join(result.output.split())  # a table: rich wraps lines


def test_routes_list_and_canary_status_print_json_with_the_last_judgement(replies):
    listed = json.loads(run(cli.routes_app, "list", "-o", "json"))
    assert listed["routes_file"] == "r.yaml"
    (route,) = listed["routes"]
    assert route["variants"][0] == {"name": "stable", "model": "fraud", "version": "", "weight": 95.0,
                                    "requests": 7, "errors": 0, "ejected": False}  # fmt: skip
    judged = route["rollout"]["last_judgement"]
    assert judged["canary"] == {"variant": "canary", "requests": 40, "errors": 1, "error_rate": 0.025,
                                "p99_seconds": 0.01}  # fmt: skip
    assert judged["thresholds"] == {"max_error_rate_increase": 0.02, "max_p99_ratio": 2.0, "min_requests": 20}
    assert json.loads(run(cli.canary_app, "status", "fraud", "--output", "json")) == route


def test_canary_status_shows_the_judges_numbers_in_the_table(replies):
    out = run(cli.canary_app, "status", "fraud")
    assert "healthy" in out and "canary canary: 40 calls, 1 errors (2.5%), p99 10.0 ms" in out
    assert "thresholds: error rate at most +2.0% over the baseline, p99 at most 2x" in out


def test_routes_audit_prints_json_with_before_and_after_as_data(replies):
    (entry,) = json.loads(run(cli.routes_app, "audit", "-o", "json"))
    assert (
        entry["before"] == {"stable": 100}
        and entry["after"] == {"stable": 95}
        and entry["reason"] == "step 2/2"
    )


def test_canary_weights_shows_the_weights_the_gateway_scaled(replies):
    out = run(cli.canary_app, "weights", "fraud", "stable=90", "canary=20")
    assert dict(replies[-1].weights) == {"stable": 90, "canary": 20}  # the rule is the gateway's
    assert "scaled to sum to 100: stable=81.82, canary=18.18" in out


def test_a_refused_reload_is_one_line_on_stderr_with_exit_status_1(monkeypatch):
    error = "routes file r.yaml: line 3 column 1: expected the node content, but found '<stream end>'"
    refused = admin_pb2.ReloadResponse(applied=False, error=error)
    monkeypatch.setattr(cli, "_call", lambda target, method, request, timeout_s=10.0: refused)
    result = CliRunner().invoke(app, ["routes", "reload"], env={"COLUMNS": "40"})  # narrow: nothing may wrap
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "meshserve routes reload: refused; the old routes keep serving: routes file r.yaml: line 3 column 1: "
        "expected the node content, but found '<stream end>'\n"
    )


def test_a_refused_reload_is_one_line_on_stderr_and_exit_status_1(monkeypatch):
    from meshserve.cli.app import app

    refused = admin_pb2.ReloadResponse(applied=False, error="routes.fraud.variants.0.weight: Input should be\n"
                                       "greater than or equal to 0")  # fmt: skip
    monkeypatch.setattr(cli, "_call", lambda target, method, request, timeout_s=10.0: refused)
    result = CliRunner().invoke(app, ["routes", "reload"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "meshserve routes reload: refused; the old routes keep serving: routes.fraud.variants.0.weight: Input "
        "should be greater than or equal to 0\n"
    )
