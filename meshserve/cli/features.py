"""`meshserve features ...`: load feature files into the online store, and see what was served how fresh."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshserve.cli.errors import (
    EXIT_USAGE,
    CliError,
    describe_rpc_error,
    dial,
    exit_status,
    reached,
    require_reachable,
)
from meshserve.cli.output import Output, OutputOption, print_json
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.launcher.endpoints_file import locate

console = Console()
features_app = typer.Typer(help="Online features: load files, freshness.", no_args_is_help=True)
Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="the feature service's address (default: MESHSERVE_TARGET_FEATURE, else the running mesh's "
        "<run_dir>/endpoints.json, else 127.0.0.1:50052)",
    ),
]
DEFAULT_TARGET = None  # found by meshserve.launcher.endpoints_file.locate


def _value(raw: object) -> feature_pb2.Value:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return feature_pb2.Value(int64_value=raw)
    if isinstance(raw, float):
        return feature_pb2.Value(double_value=raw)
    return feature_pb2.Value(string_value=str(raw))  # the service parses and validates it


def _batches(path: Path, entity: str, join_key: str, size: int) -> Iterator[feature_pb2.PushFeaturesRequest]:
    """The file as PushFeatures messages of `size` rows; a line that cannot be read raises FileReadError, and
    the rows of its batch read before it are never sent."""
    from services.feature.files import read_rows

    batch = feature_pb2.PushFeaturesRequest(entity=entity)
    for row in read_rows(path, join_key):
        message = batch.rows.add(line=row.line, entity_key=row.entity_key)
        for name, raw in row.values.items():
            message.values[name].CopyFrom(_value(raw))
        if row.event_ts is not None:
            stamp = Timestamp()
            stamp.FromNanoseconds(int(row.event_ts * 1e9))
            message.event_time.CopyFrom(stamp)
        if len(batch.rows) >= size:
            yield batch
            batch = feature_pb2.PushFeaturesRequest(entity=entity)
    if batch.rows:
        yield batch


def _written(rows: int, batches: int) -> str:
    if not rows:
        return "nothing was written"
    return f"the {rows} row(s) of the {batches} batch(es) before its batch were written, nothing after"


async def _load(target: str | None, path: Path, entity: str, batch_size: int) -> None:
    from services.feature.files import FileReadError, count_rows

    registry = load_registry()
    if entity not in registry.entities:
        known = ", ".join(sorted(registry.entities))
        raise CliError(f"unknown entity {entity!r} (known: {known})", EXIT_USAGE)
    join_key = registry.entities[entity].join_key
    batches = _batches(path, entity, join_key, batch_size)
    try:  # a file that fails in its first batch fails here, before anything is dialled
        total = count_rows(path)
        first = next(batches, None)
    except FileReadError as exc:
        raise CliError(str(exc) if exc.line is None else f"{exc}; nothing was written", EXIT_USAGE) from None

    read_error: FileReadError | None = None
    sent = 0  # batches handed to gRPC: an upper bound on what the service saw
    found = locate("feature", target)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with dial(found, "feature", server_name="feature") as channel:
        await require_reachable(channel, found, "feature")  # no progress bar for a mesh that is not there
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(f"loading {path.name}", total=total)

            async def requests():
                nonlocal read_error, sent
                batch = first
                while batch is not None:
                    sent += 1
                    yield batch
                    progress.advance(task, len(batch.rows))
                    try:
                        batch = next(batches, None)
                    except FileReadError as exc:  # end the stream: what was sent is written, the rest is not
                        read_error = exc
                        return

            stub = feature_pb2_grpc.FeatureServiceStub(channel)
            try:
                reply = await stub.PushFeatures(requests(), timeout=600)
            except grpc.aio.AioRpcError as exc:
                progress.stop()
                line = describe_rpc_error(exc, found, "feature", reached=reached(channel))
                if reached(channel):  # the service refused a batch: each one is all or nothing
                    line += (
                        "; nothing was written"
                        if sent <= 1
                        else f"; each batch of {batch_size} rows is all or nothing: the ones before the "
                        "failing one were written, it and the rest of the file were not"
                    )
                raise CliError(line, exit_status(exc)) from None
    if read_error is not None:
        raise CliError(f"{read_error}; {_written(reply.rows, reply.batches)}", EXIT_USAGE)
    console.print(f"[green]loaded[/] {reply.rows} rows ({reply.values} values) in {reply.batches} batches")


@features_app.command("load")
def load(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .csv or .parquet file")],
    entity: Annotated[str, typer.Option(help="the registry entity the rows describe")] = "account",
    batch_size: Annotated[int, typer.Option(min=1, help="rows per all-or-nothing batch")] = 500,
    target: Target = DEFAULT_TARGET,
) -> None:
    """Validate and write a file's rows (join key, optional event_time, stored features), batch by batch."""
    asyncio.run(_load(target, path, entity, batch_size))


@features_app.command("freshness")
def freshness(target: Target = DEFAULT_TARGET, output: OutputOption = Output.TABLE) -> None:
    """How often each feature was served present, missing, or older than its max age."""
    found = locate("feature", target)

    async def fetch():
        async with dial(found, "feature", server_name="feature") as channel:
            return await feature_pb2_grpc.FeatureServiceStub(channel).GetFreshness(
                feature_pb2.GetFreshnessRequest(), timeout=10
            )

    reply = asyncio.run(fetch())
    rows = [
        {"feature": f.feature, "present": f.present, "not_found": f.not_found,
         "outside_max_age": f.outside_max_age}
        for f in reply.features
    ]  # fmt: skip
    if output is Output.JSON:
        print_json({"features": rows})
        return
    table = Table(title="features served")
    for column in ("feature", "present", "not found", "outside max age"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["feature"], str(r["present"]), str(r["not_found"]), str(r["outside_max_age"]))
    console.print(table)
