"""`meshserve predictions export`: a route's prediction log as a Parquet training set, streamed from the monitor
service (MonitorService/Export), asked at its address like `meshserve quality` asks it.

The file has one row per logged answer (a shadow's answer to the same request is a row of its own, shadow = true):
prediction_id, variant, model_version, time (UTC), score, label (null where none came), shadow, then one column
per feature the model saw, null where the prediction was not among the sampled share whose features are logged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from meshserve.cli.errors import EXIT_USAGE, CliError, dial
from meshserve.cli.targets import MonitorTarget
from meshserve.cli.times import parse_since
from meshserve.launcher.endpoints_file import locate
from meshserve.monitor.v1 import monitor_pb2, monitor_pb2_grpc

__all__ = ["COLUMNS", "ExportSummary", "ExportWriter", "predictions_app", "run_export"]

console = Console()
progress_console = Console(stderr=True)
predictions_app = typer.Typer(help="The prediction log: a training set for retraining.", no_args_is_help=True)

COLUMNS = ("prediction_id", "variant", "model_version", "time", "score", "label", "shadow")
ROW_GROUP = 50_000  # rows buffered before they are written: bounds the memory an export of millions takes


@dataclass
class ExportSummary:
    rows: int = 0
    labelled: int = 0
    with_features: int = 0
    unlisted_features: set[str] = field(default_factory=set)  # in rows, not in the file's columns: left out


class ExportWriter:
    """Export chunks into one Parquet file, row group by row group. The feature columns are fixed by the first
    chunk: its feature_names (the registry's order), then any other feature its rows carry, by name. The file is
    written beside OUT and renamed into place by close(), so a failed export leaves no partial file."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(f".{out.name}.partial")
        self.summary = ExportSummary()
        self._features: list[str] | None = None
        self._columns: dict[
            str, str
        ] = {}  # feature -> its column (`feature_<name>` where a fixed one has it)
        self._rows: list[monitor_pb2.ExportRow] = []
        self._writer: Any = None

    def add(self, chunk: monitor_pb2.ExportChunk) -> None:
        if self._features is None:
            listed = list(dict.fromkeys(chunk.feature_names))
            seen = sorted({name for row in chunk.rows for name in row.features} - set(listed))
            self._features = listed + seen
            self._columns = {f: f"feature_{f}" if f in COLUMNS else f for f in self._features}
        for row in chunk.rows:
            self.summary.rows += 1
            self.summary.labelled += row.HasField("label")
            self.summary.with_features += bool(row.features)
            self.summary.unlisted_features |= set(row.features) - set(self._columns)
        self._rows.extend(chunk.rows)
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _schema(self):
        import pyarrow as pa

        fixed = [
            pa.field("prediction_id", pa.string()),
            pa.field("variant", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("time", pa.timestamp("us", tz="UTC")),
            pa.field("score", pa.float64()),
            pa.field("label", pa.float64()),
            pa.field("shadow", pa.bool_()),
        ]
        return pa.schema(fixed + [pa.field(self._columns[f], pa.float64()) for f in self._features or []])

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, self._rows = self._rows, []
        schema = self._schema()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.partial, schema)
        columns: dict[str, list[Any]] = {
            "prediction_id": [r.prediction_id for r in rows],
            "variant": [r.variant for r in rows],
            "model_version": [r.model_version for r in rows],
            "time": [round(r.time * 1_000_000) for r in rows],
            "score": [r.score for r in rows],
            "label": [r.label if r.HasField("label") else None for r in rows],
            "shadow": [r.shadow for r in rows],
        }
        for feature in self._features or []:
            columns[self._columns[feature]] = [
                r.features[feature] if feature in r.features else None for r in rows
            ]
        self._writer.write_table(pa.Table.from_pydict(columns, schema=schema))

    def close(self) -> ExportSummary:
        """Write what is left and put the file in place."""
        if self._features is None:
            self._features = []  # nothing exported: the fixed columns alone
        if self._rows or self._writer is None:
            self._flush()
        self._writer.close()
        self.partial.replace(self.out)
        return self.summary

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.partial.unlink(missing_ok=True)


def write_export(chunks: Iterable[monitor_pb2.ExportChunk], out: Path) -> ExportSummary:
    """Every chunk into OUT (the pure part of `run_export`)."""
    writer = ExportWriter(out)
    try:
        for chunk in chunks:
            writer.add(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _when(since: float) -> str:
    if not since:
        return "every retained prediction"
    return "since " + datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def run_export(
    route: str,
    out: Path,
    since: float = 0.0,
    with_labels: bool = False,
    target: str | None = None,
    *,
    tls: bool | None = None,
    timeout_s: float = 600.0,
    quiet: bool = False,
) -> ExportSummary:
    found = locate("monitor", target)  # the flag, MESHSERVE_TARGET_MONITOR, the running mesh, the default
    writer = ExportWriter(out)
    request = monitor_pb2.ExportRequest(route=route, since=since, with_labels=with_labels)
    columns = (SpinnerColumn(), TextColumn(f"exporting route {route}"), TextColumn("{task.completed:,.0f} rows"),
               TimeElapsedColumn())  # fmt: skip
    try:
        async with dial(found, "monitor", server_name="monitor", tls=tls) as channel:
            stream = monitor_pb2_grpc.MonitorServiceStub(channel).Export(request, timeout=timeout_s)
            with Progress(*columns, console=progress_console, disable=quiet, transient=True) as progress:
                task = progress.add_task("export", total=None)
                async for chunk in stream:
                    writer.add(chunk)
                    progress.advance(task, len(chunk.rows))
        summary = writer.close()
    except BaseException:
        writer.abort()
        raise
    if not quiet:
        console.print(
            f"wrote {summary.rows:,} predictions of route {route} ({summary.labelled:,} labelled, "
            f"{summary.with_features:,} with features), {_when(since)}, to {out}",
            highlight=False,
            soft_wrap=True,
        )
        if summary.unlisted_features:
            names = ", ".join(sorted(summary.unlisted_features))
            console.print(f"[yellow]left out features the export did not list at its start: {names}[/]")
    return summary


@predictions_app.command("export")
def export(
    route: Annotated[str, typer.Option(help="the route whose prediction log to export, e.g. fraud")],
    since: Annotated[
        str | None,
        typer.Option(
            help="predictions answered since: a duration ago (2h, 7d) or an ISO 8601 time (default: every one "
            "retained)"
        ),
    ] = None,
    with_labels: Annotated[
        bool, typer.Option("--with-labels", help="only predictions that have a label, with it")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="the Parquet file to write (default: <ROUTE>.predictions.parquet)"),
    ] = None,
    target: MonitorTarget = None,
    timeout: Annotated[float, typer.Option(min=1, help="deadline for the whole export, in seconds")] = 600.0,
    tls: Annotated[bool, typer.Option("--tls", help="dial over TLS (or MESHSERVE_TLS)")] = False,
) -> None:
    """Write a route's logged predictions (features, score, label, model version) to a Parquet file for
    retraining."""
    out = out or Path(f"{route}.predictions.parquet")
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise CliError(f"--out: the export is Parquet; name a .parquet file, not {str(out)!r}", EXIT_USAGE)
    try:
        start = parse_since(since, time.time()) if since else 0.0
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from None
    asyncio.run(run_export(route, out, start, with_labels, target, tls=tls or None, timeout_s=timeout))
