"""`meshserve feedback load FILE`: labels for logged predictions, sent to the gateway's
meshserve.feedback.v1.FeedbackService in batches.

Batches go one at a time, in file order: the first label for an id stands (unless --correct), so the order the
file gives must be the order the monitor sees. Each call is idempotent for the labels it stores (a repeat counts
as a duplicate), so a batch that failed for a retryable reason is sent again, and a load that stopped can be run
again from the start.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from meshserve.cli.errors import (
    EXIT_USAGE,
    CliError,
    describe_rpc_error,
    exit_status,
    reached,
    require_reachable,
)
from meshserve.cli.label_files import (
    LabelFileError,
    LabelRow,
    RefusedRow,
    check_columns,
    count_labels,
    read_labels,
    write_refused,
)
from meshserve.cli.targets import GatewayTarget
from meshserve.feedback.v1 import feedback_pb2, feedback_pb2_grpc
from meshserve.launcher.endpoints_file import locate

__all__ = ["FeedbackSummary", "feedback_app", "run_feedback_load", "to_request"]

console = Console()
progress_console = Console(stderr=True)
feedback_app = typer.Typer(help="Labels for logged predictions: what really happened.", no_args_is_help=True)

BATCH = 1_000  # labels per SendFeedback
ATTEMPTS = 3
BACKOFF_S = 0.2
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


@dataclass
class FeedbackSummary:
    accepted: int = 0
    duplicates: int = 0
    corrected: int = 0
    pending: int = 0  # of the accepted: no logged prediction with that id yet
    refused: list[RefusedRow] = field(default_factory=list)  # here, or by the monitor
    sent: int = 0  # labels in the batches answered
    refused_file: Path | None = None

    def add(self, batch: list[LabelRow], reply: feedback_pb2.SendFeedbackResponse) -> None:
        """A batch's answer; each label the monitor refused named by its line."""
        self.accepted += reply.accepted
        self.duplicates += reply.duplicates
        self.corrected += reply.corrected
        self.pending += reply.pending
        self.sent += len(batch)
        for refused in reply.refused:
            row = batch[refused.index] if refused.index < len(batch) else None
            line = row.line if row is not None else 0  # 0: the monitor named a label the batch did not have
            prediction_id = refused.prediction_id or (row.prediction_id if row is not None else "")
            self.refused.append(RefusedRow(line, prediction_id, refused.reason))

    def line(self) -> str:
        """The one summary line."""
        refused = f"{len(self.refused)} refused" + (
            f" (lines and reasons in {self.refused_file})" if self.refused_file else ""
        )
        return (
            f"{self.accepted} accepted ({self.pending} of them pending their prediction), "
            f"{self.duplicates} duplicates, {self.corrected} corrected, {refused}"
        )


def to_request(batch: list[LabelRow], correct: bool) -> feedback_pb2.SendFeedbackRequest:
    return feedback_pb2.SendFeedbackRequest(
        labels=[
            feedback_pb2.Label(prediction_id=r.prediction_id, value=r.value, event_time=r.event_time)
            for r in batch
        ],
        correct=correct,
    )


def _sent_so_far(summary: FeedbackSummary, batch: list[LabelRow]) -> str:
    if not summary.sent:
        return "no label was stored"
    return (
        f"the {summary.sent} label(s) before line {batch[0].line} were sent and stay stored; rerunning the load is "
        "safe (labels already stored count as duplicates)"
    )


async def run_feedback_load(
    path: Path,
    correct: bool = False,
    target: str | None = None,
    *,
    batch_size: int = BATCH,
    tls: bool | None = None,
    api_key: str | None = None,
    timeout_s: float = 30.0,
    quiet: bool = False,
) -> FeedbackSummary:
    """Read, check and send every label of the file; write FILE.refused.csv when any row was refused. CliError
    (exit 2) for a file that cannot be read or lacks the columns, before anything is dialled."""
    try:
        check_columns(path)
        total = count_labels(path)
    except LabelFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    summary = FeedbackSummary()
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    found = locate("gateway", target)  # the flag, MESHSERVE_TARGET_GATEWAY, the running mesh, the default
    from meshserve.launcher.mesh import cli_channel

    async with cli_channel(found.address, tls=found.tls if tls is None else tls) as channel:
        await require_reachable(channel, found, "gateway")  # no progress bar for a mesh that is not there
        stub = feedback_pb2_grpc.FeedbackServiceStub(channel)

        async def send(batch: list[LabelRow]) -> None:
            request = to_request(batch, correct)
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    reply = await stub.SendFeedback(request, timeout=timeout_s, metadata=metadata)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in RETRYABLE and attempt < ATTEMPTS:
                        await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
                        continue
                    summary.refused_file = write_refused(path, summary.refused)
                    line = describe_rpc_error(exc, found, "gateway", reached=reached(channel))
                    raise CliError(f"{line}; {_sent_so_far(summary, batch)}", exit_status(exc)) from None
            summary.add(batch, reply)

        columns = (TextColumn(f"loading labels from {path.name}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=progress_console, disable=quiet) as progress:
            task = progress.add_task("labels", total=total)
            batch: list[LabelRow] = []
            try:
                for row in read_labels(path):
                    if isinstance(row, RefusedRow):
                        summary.refused.append(row)
                        progress.advance(task)
                        continue
                    batch.append(row)
                    if len(batch) >= batch_size:
                        await send(batch)
                        progress.advance(task, len(batch))
                        batch = []
                if batch:
                    await send(batch)
                    progress.advance(task, len(batch))
            except LabelFileError as exc:  # the file broke off: what was sent stays
                if batch:
                    await send(batch)
                summary.refused_file = write_refused(path, summary.refused)
                raise CliError(f"{exc}; {summary.sent} label(s) before it were sent", EXIT_USAGE) from None
    summary.refused_file = write_refused(path, summary.refused)
    if not quiet:
        console.print(f"{path.name}: {summary.line()}", highlight=False, soft_wrap=True)
    return summary


@feedback_app.command("load")
def load(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="CSV or Parquet (by suffix) with columns prediction_id, label and optionally event_time (Unix "
            "seconds or ISO 8601; default: when received); other columns are ignored",
        ),
    ],
    correct: Annotated[
        bool,
        typer.Option(
            "--correct", help="replace labels already stored for these ids (else the first label stands)"
        ),
    ] = False,
    target: GatewayTarget = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="labels per call")] = BATCH,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="MESHSERVE_API_KEY", help="an API key with role feedback, where the gateway requires one"
        ),
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="dial over TLS (or MESHSERVE_TLS)")] = False,
) -> None:
    """Send a file of labels for logged predictions through the gateway, in batches of 1,000. Malformed rows and
    labels the monitor refuses go to FILE.refused.csv with their line and reason; the rest are kept."""
    asyncio.run(
        run_feedback_load(file, correct, target, batch_size=batch_size, tls=tls or None, api_key=api_key)
    )
