"""`meshserve canary status` with the judge's anytime-valid comparisons: each metric's verdict, both sides'
values, the estimate in its bounds, the limit and the e-value, in an 80-column terminal without a cut number; a
shadow's paired comparison under its line; the shadow gate; and the same figures in `-o json` (null where a
comparison waiting for samples has no bounds yet)."""

from __future__ import annotations

import json
import math

import pytest
from rich.console import Console
from typer.testing import CliRunner

from meshserve.admin.v1 import admin_pb2
from meshserve.cli import admin as cli
from tests.unit.test_cli_tables import readable

AUC = admin_pb2.Comparison(
    metric="AUC", verdict="breach", canary=0.742, baseline=0.781, estimate=-0.039, lower=-0.061, upper=-0.017,
    limit=-0.01, e_value=4200, alpha=0.05 / 6, canary_samples=1234, baseline_samples=23456, min_samples=200,
)  # fmt: skip
LOG_LOSS = admin_pb2.Comparison(
    metric="log loss", verdict="undecided", canary=0.41, baseline=0.4, estimate=1.025, lower=0.98, upper=1.09,
    limit=1.05, e_value=0.4, alpha=0.05 / 6, canary_samples=1234, baseline_samples=23456, min_samples=200,
)  # fmt: skip
ERRORS = admin_pb2.Comparison(
    metric="error rate", verdict="waiting", canary=0.0, baseline=0.0, estimate=0.0, lower=math.nan,
    upper=math.nan, limit=0.02, e_value=math.nan, alpha=0.05 / 12, canary_samples=12, baseline_samples=230,
    min_samples=50,
)  # fmt: skip
REASON = (
    "canary AUC 0.742 is below stable 0.781 by more than 0.01 (anytime-valid 99.17 % bounds on the difference "
    "[-0.0610, -0.0170], e-value 4.2e+03)"
)


def status(gate: str = "") -> admin_pb2.RouteStatus:
    judged = admin_pb2.Judgement(
        time=1.5e9, step=0, verdict="breach", reason=REASON, max_error_rate_increase=0.02, max_p99_ratio=2,
        min_requests=50, comparisons=[ERRORS, AUC, LOG_LOSS],
        canary=admin_pb2.JudgedWindow(variant="canary", requests=12, p99_seconds=0.01),
        baseline=admin_pb2.JudgedWindow(variant="stable", requests=230, p99_seconds=0.009),
    )  # fmt: skip
    shadow = admin_pb2.ShadowStatus(variant="candidate", percent=100, compared=900, quality=[AUC, LOG_LOSS])
    return admin_pb2.RouteStatus(
        route="fraud", sticky="entity",
        variants=[admin_pb2.VariantStatus(name="stable", model="fraud", weight=100),
                  admin_pb2.VariantStatus(name="canary", model="fraud", version="3", weight=0)],
        shadows=[shadow, admin_pb2.ShadowStatus(variant="other", percent=5, quality_note="no monitor service configured")],
        rollout=admin_pb2.RolloutStatus(state="rolled_back", canary="canary", step=0, steps=[5, 25, 50, 100],
                                        last_reason=REASON, last_judgement=judged, gate=gate),
    )  # fmt: skip


def shown(reply: admin_pb2.RouteStatus, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with it
    saved, cli.console = cli.console, console
    try:
        cli.show_route(reply)
        return console.export_text()
    finally:
        cli.console = saved
        console.file.close()


def test_canary_status_shows_each_comparison_readably_at_80_columns():
    text = readable(
        shown(status()),
        80,
        [
            "AUC breach: canary 0.7420, stable 0.7810 (1,234 / 23,456 labels)",
            "-0.0390 in [-0.0610, -0.0170] at 99.17 %, limit -0.0100, e-value 4.2e+03",
            "log loss undecided: canary 0.4100, stable 0.4000 (1,234 / 23,456 labels)",
            "x1.025 in [x0.980, x1.090] at 99.17 %, limit x1.050, e-value 0.4",
            "error rate waiting: 12 canary and 230 stable requests of 50 needed",
            "AUC breach: candidate 0.7420, stable 0.7810",  # the shadow, paired with the primary
            "quality: no monitor service configured",
            "[-0.0610, -0.0170]",
        ],
    )
    assert "anytime-valid comparisons (bounds that hold at every look):" in text


def test_the_shadow_gate_says_what_the_rollout_waits_for():
    text = shown(status(gate="candidate"), width=200)
    assert (
        "rollout of canary: rolled_back at shadow candidate must pass first (5% → 25% → 50% → 100%)" in text
    )


@pytest.fixture
def replies(monkeypatch):
    monkeypatch.setattr(cli, "_call", lambda target, method, request, timeout_s=10.0: admin_pb2.ListRoutesResponse(
        routes=[status()], routes_file="r.yaml"))  # fmt: skip


def test_canary_status_json_carries_the_comparisons_with_null_for_missing_bounds(replies):
    result = CliRunner().invoke(cli.canary_app, ["status", "fraud", "-o", "json"])
    assert result.exit_code == 0, result.output
    route = json.loads(result.output)
    judged = route["rollout"]["last_judgement"]
    assert [c["metric"] for c in judged["comparisons"]] == ["error rate", "AUC", "log loss"]
    errors, auc, _ = judged["comparisons"]
    assert (errors["lower"], errors["upper"], errors["e_value"]) == (None, None, None)
    assert auc == {
        "metric": "AUC", "verdict": "breach", "canary": pytest.approx(0.742), "baseline": pytest.approx(0.781),
        "estimate": pytest.approx(-0.039), "lower": pytest.approx(-0.061), "upper": pytest.approx(-0.017),
        "limit": pytest.approx(-0.01), "e_value": 4200.0, "alpha": pytest.approx(0.05 / 6),
        "canary_samples": 1234, "baseline_samples": 23456, "min_samples": 200,
    }  # fmt: skip
    assert route["shadows"][0]["quality"][0]["verdict"] == "breach"
    assert route["shadows"][1]["quality_note"] == "no monitor service configured"
    assert route["rollout"]["gate"] == "" and judged["shadow"] == ""
