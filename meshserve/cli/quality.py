"""`meshserve quality ROUTE`: how right each variant and model version of a route has been over a window, from
the monitor service (MonitorService/GetQuality), asked directly at its address: the flag, MESHSERVE_TARGET_MONITOR,
the running mesh's endpoints.json, else 127.0.0.1:50057.

The table is built from the same dictionary `-o json` prints, so the two never disagree: a column per variant and
model version, side by side for comparison, a row per figure. A route has a few variants, so it fits 80 columns; a
terminal too narrow for it gets `name: value` records instead (FittedTable)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.text import Text

from meshserve.cli.errors import EXIT_USAGE, CliError, dial
from meshserve.cli.output import FittedTable, Output, OutputOption, print_json, records
from meshserve.cli.targets import MonitorTarget
from meshserve.cli.times import describe_duration, parse_duration
from meshserve.launcher.endpoints_file import locate
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

__all__ = ["fetch_quality", "quality", "quality_dict", "quality_view"]

console = Console()
TIMEOUT_S = 10.0
TASKS = {monitor_pb2.BINARY: "binary", monitor_pb2.REGRESSION: "regression"}


def _bins(binary: monitor_pb2.BinaryQuality) -> list[dict[str, Any]]:
    return [
        {"lower": b.lower, "upper": b.upper, "count": b.count, "mean_score": b.mean_score,
         "positive_fraction": b.positive_fraction}
        for b in binary.bins
    ]  # fmt: skip


def _variant(v: monitor_pb2.VariantQuality) -> dict[str, Any]:
    task = TASKS.get(v.task, "unspecified")
    binary = regression = None
    if v.HasField("binary"):
        b = v.binary
        binary = {
            "auc": b.auc if b.HasField("auc") else None,
            "log_loss": b.log_loss if b.HasField("log_loss") else None,
            "brier": b.brier if b.HasField("brier") else None,
            "threshold": b.threshold, "precision": b.precision, "recall": b.recall, "f1": b.f1,
            "predicted_positive_rate": b.predicted_positive_rate, "actual_positive_rate": b.actual_positive_rate,
            "expected_calibration_error": b.expected_calibration_error, "bins": _bins(b),
        }  # fmt: skip
    if v.HasField("regression"):
        regression = {"mae": v.regression.mae, "rmse": v.regression.rmse}
    return {
        "variant": v.variant, "model": v.model, "model_version": v.model_version, "shadow": v.shadow,
        "task": task, "predictions": v.predictions, "labelled": v.labelled, "label_coverage": v.label_coverage,
        "label_delay_p50_s": v.label_delay_p50_s, "label_delay_p90_s": v.label_delay_p90_s,
        "binary": binary, "regression": regression,
    }  # fmt: skip


def quality_dict(reply: monitor_pb2.GetQualityResponse, window_s: float, route: str = "") -> dict[str, Any]:
    """The whole answer, as `-o json` prints it (window_s 0: every prediction retained)."""
    f = reply.feedback
    return {
        "route": reply.route or route,
        "window_s": window_s,
        "variants": [_variant(v) for v in reply.variants],
        "feedback": {
            "accepted": f.accepted,
            "duplicates": f.duplicates,
            "corrected": f.corrected,
            "pending": f.pending,
            "unknown": f.unknown,
            "refused": f.refused,
        },  # fmt: skip
        "dropped": reply.dropped,
    }


def _header(v: dict[str, Any]) -> Text:
    """A variant's column heading, e.g. `canary v3`, a shadow's on two lines: what tells the columns apart."""
    version = f" v{v['model_version']}" if v["model_version"] else ""
    return Text(f"{v['variant']}{version}" + ("\n(shadow)" if v["shadow"] else ""), style="bold")


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2%}" if 0 < value < 0.01 else f"{value:.1%}"


def _rows(variants: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(metric, one cell per variant) in reading order: the labels, then the task's figures. A variant without
    labels has no figures ("-"); `n/a` is an AUC the labels cannot give (one class only)."""

    def each(value) -> list[str]:
        return [value(v) for v in variants]

    def labelled(value):
        return lambda v: value(v) if v["labelled"] else "-"

    def of(kind: str, key: str, show=_number):
        return labelled(lambda v: show(v[kind][key]) if v[kind] is not None else "-")

    rows = [
        ("model", each(lambda v: v["model"] or "-")),
        ("logged", each(lambda v: f"{v['predictions']:,}")),
        ("labelled", each(lambda v: f"{v['labelled']:,}")),
        ("label coverage", each(lambda v: _share(v["label_coverage"]))),
        ("label delay p50", each(labelled(lambda v: describe_duration(v["label_delay_p50_s"])))),
        ("label delay p90", each(labelled(lambda v: describe_duration(v["label_delay_p90_s"])))),
    ]
    binary = [v["binary"] for v in variants if v["binary"] is not None]
    if binary:
        thresholds = sorted({b["threshold"] for b in binary})
        at = f" at {thresholds[0]:g}" if len(thresholds) == 1 else ""
        auc = of("binary", "auc")
        rows += [
            (
                "AUC",
                each(
                    lambda v: (
                        "n/a" if v["labelled"] and v["binary"] and v["binary"]["auc"] is None else auc(v)
                    )
                ),
            ),
            ("log loss", each(of("binary", "log_loss"))),
            ("Brier score", each(of("binary", "brier"))),
            ("calibration error", each(of("binary", "expected_calibration_error"))),
            (f"precision{at}", each(of("binary", "precision"))),
            (f"recall{at}", each(of("binary", "recall"))),
            (f"F1{at}", each(of("binary", "f1"))),
            (
                "predicted positive",
                each(lambda v: _share(v["binary"]["predicted_positive_rate"]) if v["binary"] else "-"),
            ),
            ("actual positive", each(of("binary", "actual_positive_rate", _share))),
        ]
    if any(v["regression"] is not None for v in variants):
        rows += [("MAE", each(of("regression", "mae"))), ("RMSE", each(of("regression", "rmse")))]
    return rows


def quality_view(answer: dict[str, Any]) -> RenderableType:
    """One route's quality: a column per variant and model version (a shadow's marked), a row per figure."""
    window = answer["window_s"]
    over = f"last {describe_duration(window)}" if window else "every retained prediction"
    route, variants = answer["route"], answer["variants"]
    parts: list[RenderableType] = []
    if not variants:
        line = f"route {route}: no predictions logged over the {over} (is its quality block on?)"
        parts.append(Text(line, style="yellow"))
    else:
        headers = [_header(v) for v in variants]
        rows = [[Text(metric), *(Text(cell) for cell in cells)] for metric, cells in _rows(variants)]
        parts.append(
            FittedTable(
                f"route {route}, {over}",
                ["", *headers],  # type: ignore[list-item]
                rows,
                narrow=lambda: records(
                    f"route {route}, {over}", ["", *(h.plain.replace("\n", " ") for h in headers)], rows
                ),
                show_header=True,
                title_justify="left",
            )
        )
        if any(cell.plain == "n/a" for row in rows for cell in row[1:]):
            parts.append(Text("n/a: the labels hold one class only, so AUC is undefined", style="dim"))
    f = answer["feedback"]
    parts.append(
        Text(
            f"labels received: {f['accepted']:,} accepted ({f['pending']:,} pending their prediction), "
            f"{f['duplicates']:,} duplicates, {f['corrected']:,} corrected, {f['unknown']:,} unknown, "
            f"{f['refused']:,} refused"
        )
    )
    if answer["dropped"]:
        parts.append(
            Text(
                f"{answer['dropped']:,} predictions the gateways could not log (the monitor was down or slow) are "
                "missing from these figures",
                style="yellow",
            )
        )
    return Group(*parts)


async def fetch_quality(
    route: str, window_s: float, target: str | None = None, tls: bool | None = None
) -> monitor_pb2.GetQualityResponse:
    found = locate("monitor", target)  # the flag, MESHSERVE_TARGET_MONITOR, the running mesh, the default
    async with dial(found, "monitor", server_name="monitor", tls=tls) as channel:
        return await monitor_pb2_grpc.MonitorServiceStub(channel).GetQuality(
            monitor_pb2.GetQualityRequest(route=route, window_s=window_s), timeout=TIMEOUT_S
        )


def quality(
    route: Annotated[str, typer.Argument(help="route name, e.g. fraud")],
    window: Annotated[
        str,
        typer.Option(help="predictions answered within this long ago: 30m, 1h, 2d; 0 = every one retained"),
    ] = "1h",
    target: MonitorTarget = None,
    tls: Annotated[bool, typer.Option("--tls", help="dial over TLS (or MESHSERVE_TLS)")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """How right each variant and model version of a route has been: label coverage and delay, AUC, log loss,
    Brier score, calibration error, precision / recall / F1 at the route's threshold (MAE and RMSE for
    regression)."""
    try:
        window_s = parse_duration(window)
    except ValueError as exc:
        raise CliError(f"--window: {exc}", EXIT_USAGE) from None
    reply = asyncio.run(fetch_quality(route, window_s, target, tls or None))
    answer = quality_dict(reply, window_s, route)
    if output is Output.JSON:
        print_json(answer)
    else:
        console.print(quality_view(answer))
