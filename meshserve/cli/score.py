"""`meshserve score`: a CSV or Parquet file scored through the gateway's Predict, in large batches."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from meshserve.cli.errors import (
    EXIT_USAGE,
    CliError,
    describe_rpc_error,
    exit_status,
    reached,
    require_reachable,
)
from meshserve.feature.registry import load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.endpoints_file import locate
from meshserve.launcher.mesh import cli_channel
from meshserve.scoring.checkpoint import Checkpoint, Fingerprint, ScoredRow
from meshserve.scoring.files import count_rows, read_columns, read_rows, rejects_path, write_outputs
from meshserve.scoring.rows import RowSchema, ValidRow
from meshserve.scoring.runner import PredictFailed, ScoringSummary, run_scoring

console = Console(stderr=True)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def to_request(route: str, rows: list[ValidRow]) -> gateway_pb2.PredictRequest:
    def value(v: int | float) -> feature_pb2.Value:
        return feature_pb2.Value(int64_value=v) if isinstance(v, int) else feature_pb2.Value(double_value=v)

    return gateway_pb2.PredictRequest(
        route=route,
        instances=[
            gateway_pb2.Instance(
                entity_key=r.entity_key,
                features={k: value(v) for k, v in r.features.items()},
                prediction_id=r.prediction_id,
            )
            for r in rows
        ],
    )


def from_reply(reply: gateway_pb2.PredictResponse) -> list[ScoredRow]:
    return [
        ScoredRow(
            p.entity_key,
            p.score,
            p.variant,
            p.model_version,
            gateway_pb2.Tier.Name(p.tier),
            tuple(p.defaulted_features),
            p.prediction_id,
        )
        for p in reply.predictions
    ]


async def run_score(
    path: Path,
    route: str,
    out: Path | None = None,
    target: str | None = None,
    batch: int = 512,
    in_flight: int = 8,
    *,
    model: str | None = None,
    key_column: str | None = None,
    registry_path: Path | None = None,
    timeout_s: float = 30.0,
    tls: bool | None = None,
    api_key: str | None = None,
    stop_after: int | None = None,
    quiet: bool = False,
    require_mesh: bool = False,
) -> ScoringSummary:
    out = out or path.with_name(path.stem + ".scored.parquet")
    registry = load_registry(registry_path)
    described = (model or route) in registry.models  # else the gateway is asked about the route first
    schema = RowSchema.for_model(registry, model or route, key_column) if described else None
    if schema is not None:  # a file no row of which could be scored fails before anything is dialled
        _require_columns(path, schema)
    checkpoint = Checkpoint(out, Fingerprint.of(path, route, batch))
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    started = time.perf_counter()
    found = locate("gateway", target)  # the flag, MESHSERVE_TARGET_GATEWAY, the running mesh, the default
    async with cli_channel(found.address, tls=found.tls if tls is None else tls) as channel:
        stub = gateway_pb2_grpc.PredictionServiceStub(channel)
        if require_mesh:  # `meshserve score`: one line, not a file of rejects, when nothing answers there
            await require_reachable(channel, found, "gateway")
            try:  # ... or when the route is unknown (or refused): an empty Predict only looks the route up
                await stub.Predict(
                    gateway_pb2.PredictRequest(route=route), timeout=timeout_s, metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                line = describe_rpc_error(exc, found, "gateway", reached=reached(channel))
                raise CliError(line, exit_status(exc)) from None
        if schema is None:
            schema = RowSchema.for_model(registry, model or route, key_column)  # KeyError: not described
            _require_columns(path, schema)

        async def predict(rows: list[ValidRow]) -> list[ScoredRow]:
            try:
                reply = await stub.Predict(to_request(route, rows), timeout=timeout_s, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                raise PredictFailed(f"{exc.code().name}: {exc.details()}", exc.code() in RETRYABLE) from None
            answers = from_reply(reply)
            if len(answers) != len(rows):
                raise PredictFailed(f"{len(answers)} predictions for {len(rows)} instances", False)
            return answers

        with Progress(
            TextColumn(f"scoring {path.name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        ) as progress:
            task = progress.add_task("score", total=count_rows(path), rate="")

            def advance(n: int) -> None:
                progress.advance(task, n)
                done = progress.tasks[0].completed
                progress.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):,.0f} rows/s")

            summary = await run_scoring(
                read_rows(path),
                schema,
                predict,
                checkpoint,
                batch=batch,
                in_flight=in_flight,
                on_progress=advance,
                stop_after=stop_after,
            )
    summary.rows, summary.rejects, summary.defaulted = write_outputs(out, checkpoint, summary.chunks)
    checkpoint.remove()
    elapsed = time.perf_counter() - started
    if not quiet:
        resumed = (
            f" (resumed: {summary.resumed_chunks} batch(es) from a checkpoint)"
            if summary.resumed_chunks
            else ""
        )
        rejected = f"{summary.rejects} rejects ({rejects_path(out)})" if summary.rejects else "no rejects"
        console.print(
            f"{summary.rows} rows scored, {rejected} in {elapsed:.2f}s: "
            f"{(summary.rows + summary.rejects) / max(elapsed, 1e-9):,.0f} rows/s -> {out}{resumed}"
        )
        if summary.defaulted:
            console.print(
                f"[yellow]{summary.defaulted} of them scored with defaults for stored features (unknown entities, "
                "or values too old): see the defaulted_features column[/]"
            )
    return summary


def _require_columns(path: Path, schema: RowSchema) -> None:
    problem = schema.missing_columns(read_columns(path))
    if problem is not None:
        raise CliError(f"{path} {problem}", EXIT_USAGE)
