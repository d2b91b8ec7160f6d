"""`meshserve features ...`: load feature files into the online store, and see what was served how fresh."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshserve.feature.v1 import feature_pb2, feature_pb2_grpc
from meshserve.registry import load_registry

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
DEFAULT_TARGET = None  # found by meshserve.endpoints_file.locate


def _value(raw: object) -> feature_pb2.Value:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return feature_pb2.Value(int64_value=raw)
    if isinstance(raw, float):
        return feature_pb2.Value(double_value=raw)
    return feature_pb2.Value(string_value=str(raw))  # the service parses and validates it


def _batches(path: Path, entity: str, join_key: str, size: int):
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


async def _load(target: str | None, path: Path, entity: str, batch_size: int) -> int:
    from meshserve.endpoints_file import locate
    from services.feature.files import count_rows

    found = locate("feature", target)

    join_key = load_registry().entities[entity].join_key
    total = count_rows(path)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"loading {path.name}", total=total)

        async def requests():
            for batch in _batches(path, entity, join_key, batch_size):
                yield batch
                progress.advance(task, len(batch.rows))

        from meshserve.mesh import cli_channel  # TLS when the mesh runs with it (MESHSERVE_TLS)

        async with cli_channel(found.address, server_name="feature", tls=found.tls) as channel:
            stub = feature_pb2_grpc.FeatureServiceStub(channel)
            try:
                reply = await stub.PushFeatures(requests(), timeout=600)
            except grpc.aio.AioRpcError as exc:
                progress.stop()
                console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
                console.print("batches before the failing one were written; the failing batch was not.")
                return 1
    console.print(f"[green]loaded[/] {reply.rows} rows ({reply.values} values) in {reply.batches} batches")
    return 0


@features_app.command("load")
def load(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="a .csv or .parquet file")],
    entity: str = "account",
    batch_size: Annotated[int, typer.Option(min=1, help="rows per all-or-nothing batch")] = 500,
    target: Target = DEFAULT_TARGET,
) -> None:
    """Validate and write a file's rows (join key, optional event_time, stored features), batch by batch."""
    raise typer.Exit(asyncio.run(_load(target, path, entity, batch_size)))


@features_app.command("freshness")
def freshness(target: Target = DEFAULT_TARGET) -> None:
    """How often each feature was served present, missing, or older than its max age."""

    from meshserve.endpoints_file import locate

    found = locate("feature", target)

    async def fetch():
        from meshserve.mesh import cli_channel  # TLS when the mesh runs with it (MESHSERVE_TLS)

        async with cli_channel(found.address, server_name="feature", tls=found.tls) as channel:
            return await feature_pb2_grpc.FeatureServiceStub(channel).GetFreshness(
                feature_pb2.GetFreshnessRequest(), timeout=10
            )

    reply = asyncio.run(fetch())
    table = Table(title="features served")
    for column in ("feature", "present", "not found", "outside max age"):
        table.add_column(column)
    for f in reply.features:
        table.add_row(f.feature, str(f.present), str(f.not_found), str(f.outside_max_age))
    console.print(table)
