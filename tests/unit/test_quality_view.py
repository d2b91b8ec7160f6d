"""`meshserve quality`'s output without a server: the JSON says every figure of the monitor's answer, and the
tables built from it are whole in an 80-column terminal (tables where they fit, records where they do not)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshserve.cli.quality import quality_dict, quality_view
from meshserve.cli.times import describe_duration, parse_duration, parse_since
from meshserve.monitor.v1 import monitor_pb2
from tests.unit.test_cli_tables import readable, render

NARROW = 80


def binary(auc: float | None = 0.9132, **fields) -> monitor_pb2.BinaryQuality:
    values = dict(log_loss=0.2871, brier=0.0812, threshold=0.5, precision=0.7, recall=0.6125, f1=0.6533,
                  predicted_positive_rate=0.042, actual_positive_rate=0.048, expected_calibration_error=0.0213,
                  bins=[monitor_pb2.ReliabilityBin(lower=0.0, upper=0.1, count=900, mean_score=0.02,
                                                   positive_fraction=0.018)])  # fmt: skip
    values |= fields
    if auc is not None:
        values["auc"] = auc
    return monitor_pb2.BinaryQuality(**values)


def reply() -> monitor_pb2.GetQualityResponse:
    def variant(name, version, shadow=False, labelled=1824, **more):
        return monitor_pb2.VariantQuality(
            variant=name, model="fraud", model_version=version, shadow=shadow, predictions=1_204_311,
            labelled=labelled, label_coverage=labelled / 1_204_311, label_delay_p50_s=3720, label_delay_p90_s=86_400,
            task=monitor_pb2.BINARY, **more,
        )  # fmt: skip

    return monitor_pb2.GetQualityResponse(
        route="fraud",
        variants=[
            variant("stable", "1", binary=binary()),
            variant("canary", "3", binary=binary(auc=0.8811)),
            variant("challenger", "4", shadow=True, binary=binary(auc=None)),  # labels of one class only
            variant("new", "5", labelled=0, binary=binary(auc=None)),
        ],
        feedback=monitor_pb2.FeedbackCounts(
            accepted=5472, duplicates=12, corrected=3, pending=40, unknown=7, refused=2
        ),  # fmt: skip
        dropped=31,
    )


def test_the_json_holds_every_figure_and_says_what_is_absent():
    answer = quality_dict(reply(), 3600.0)
    assert answer["route"] == "fraud" and answer["window_s"] == 3600.0 and answer["dropped"] == 31
    stable, canary, shadow, new = answer["variants"]
    assert stable["binary"]["auc"] == pytest.approx(0.9132) and canary["binary"]["auc"] == pytest.approx(
        0.8811
    )
    assert (shadow["variant"], shadow["shadow"], shadow["binary"]["auc"]) == ("challenger", True, None)
    assert stable["task"] == "binary" and stable["regression"] is None and stable["model"] == "fraud"
    assert stable["binary"]["bins"] == [
        {"lower": 0.0, "upper": 0.1, "count": 900, "mean_score": pytest.approx(0.02),
         "positive_fraction": pytest.approx(0.018)}
    ]  # fmt: skip
    assert (stable["predictions"], stable["labelled"], stable["label_delay_p90_s"]) == (
        1_204_311,
        1824,
        86_400,
    )
    assert new["labelled"] == 0
    assert answer["feedback"] == {"accepted": 5472, "duplicates": 12, "corrected": 3, "pending": 40, "unknown": 7,
                                  "refused": 2}  # fmt: skip
    assert quality_dict(monitor_pb2.GetQualityResponse(), 0, "fraud")["route"] == "fraud"


def row(text: str, metric: str) -> list[str]:
    """The cells of one figure's row of the table, metric first."""
    (line,) = [line for line in text.splitlines() if line.startswith(f"│ {metric} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_at_80_columns_the_variants_stand_side_by_side_with_each_figure_whole():
    text = readable(
        render(quality_view(quality_dict(reply(), 3600.0)), NARROW), NARROW,
        ["route fraud, last 1h", "stable v1", "canary v3", "challenger v4", "(shadow)", "new v5",
         "n/a: the labels hold one class only, so AUC is undefined",
         "5,472 accepted (40 pending their prediction), 12 duplicates, 3", "7 unknown, 2 refused",
         "31 predictions the gateways could not log"],
    )  # fmt: skip
    assert "┃ stable v1 ┃ canary v3 ┃" in text  # a table, not records
    assert row(text, "model") == ["model", "fraud", "fraud", "fraud", "fraud"]
    assert row(text, "logged") == ["logged", "1,204,311", "1,204,311", "1,204,311", "1,204,311"]
    assert row(text, "label coverage") == ["label coverage", "0.15%", "0.15%", "0.15%", "0.0%"]
    assert row(text, "label delay p50") == ["label delay p50", "1h 2m", "1h 2m", "1h 2m", "-"]
    assert row(text, "label delay p90") == ["label delay p90", "1d", "1d", "1d", "-"]
    assert row(text, "AUC") == ["AUC", "0.9132", "0.8811", "n/a", "-"]  # one class; no labels at all
    for metric, value in (("log loss", "0.2871"), ("Brier score", "0.0812"), ("calibration error", "0.0213"),
                          ("precision at 0.5", "0.7000"), ("recall at 0.5", "0.6125"), ("F1 at 0.5", "0.6533"),
                          ("actual positive", "4.8%")):  # fmt: skip
        assert row(text, metric) == [metric, value, value, value, "-"], metric
    assert row(text, "predicted positive") == ["predicted positive", *["4.2%"] * 4]  # needs no label


def test_a_narrow_terminal_gets_records_that_still_fit():
    readable(
        render(quality_view(quality_dict(reply(), 0)), 50), 50,
        ["route fraud, every retained prediction", "stable v1: 0.9132", "challenger v4 (shadow): n/a"],
    )  # fmt: skip


def test_a_regression_route_shows_its_errors_and_an_empty_route_says_so():
    regression = monitor_pb2.GetQualityResponse(
        route="spend",
        variants=[monitor_pb2.VariantQuality(variant="stable", model="spend", model_version="2", predictions=10,
                                             labelled=8, label_coverage=0.8, task=monitor_pb2.REGRESSION,
                                             regression=monitor_pb2.RegressionQuality(mae=1.25, rmse=2.5))],
    )  # fmt: skip
    text = readable(
        render(quality_view(quality_dict(regression, 1800)), NARROW), NARROW, ["route spend, last 30m"]
    )
    assert row(text, "MAE") == ["MAE", "1.2500"] and row(text, "RMSE") == ["RMSE", "2.5000"]
    assert row(text, "label coverage") == ["label coverage", "80.0%"]
    assert "AUC" not in text
    empty = render(quality_view(quality_dict(monitor_pb2.GetQualityResponse(route="fraud"), 3600)), NARROW)
    assert "route fraud: no predictions logged over the last 1h (is its quality block on?)" in empty


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400), ("2d", 172_800), ("1w", 604_800), ("45", 45),
     ("0", 0), ("0.5h", 1800)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1y", "-1h", "1h-", "soon"])
def test_a_bad_duration_says_what_is_expected(text):
    with pytest.raises(ValueError, match="expected a duration such as 90s, 30m, 1h or 2d"):
        parse_duration(text)


def test_since_is_a_duration_ago_or_an_iso_time():
    assert parse_since("2h", now=10_000.0) == 2800.0
    noon = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-01T12:00:00Z", now=0) == parse_since("2026-12-01T12:00:00", now=0) == noon
    assert parse_since("2026-12-01T13:00:00+01:00", now=0) == noon
    with pytest.raises(ValueError, match="or an ISO 8601 time"):
        parse_since("last tuesday", now=0)
    shown = [describe_duration(s) for s in (0, 0.2, 45, 3600, 3720, 90_000, -281_227.7)]
    assert shown == [
        "0s",
        "0s",
        "45s",
        "1h",
        "1h 2m",
        "1d 1h",
        "-3d 6h 7m 8s",
    ]  # a label dated before its prediction
