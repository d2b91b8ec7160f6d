"""The scoring loop: chunks of rows validated, sent through an injected `predict` with several in flight,
each finished chunk checkpointed. No gRPC here: the CLI passes a `predict` that calls the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from meshserve.scoring.checkpoint import Checkpoint, PartResult, ScoredRow
from meshserve.scoring.rows import RawRow, Reject, RowSchema, ValidRow, chunks

__all__ = ["PredictFailed", "Scored", "ScoringInterrupted", "ScoringSummary", "run_scoring"]

Scored = ScoredRow


class PredictFailed(Exception):
    """A Predict that did not answer; `retryable` says whether another attempt may succeed."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class ScoringInterrupted(Exception):
    """Raised by the `stop_after` test hook: the chunks finished so far are checkpointed."""


@dataclass
class ScoringSummary:
    chunks: int = 0
    resumed_chunks: int = 0
    rows: int = 0
    rejects: int = 0
    defaulted: int = 0  # rows scored with defaults for stored features (an unknown entity, or values too old)


PredictFn = Callable[[list[ValidRow]], Awaitable[list[ScoredRow]]]


async def predict_with_retries(
    predict: PredictFn, rows: list[ValidRow], attempts: int, backoff_s: float
) -> list[ScoredRow] | str:
    """The answers, or (a str) why the request failed for good."""
    for attempt in range(1, attempts + 1):
        try:
            return await predict(rows)
        except PredictFailed as exc:
            if not exc.retryable or attempt == attempts:
                return f"request failed after {attempt} attempt(s): {exc.reason}"
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


async def score_chunk(
    index: int, raw: list[RawRow], schema: RowSchema, predict: PredictFn, attempts: int, backoff_s: float
) -> PartResult:
    part = PartResult(index)
    valid: list[ValidRow] = []
    for row in raw:
        checked = schema.validate(row)
        (valid if isinstance(checked, ValidRow) else part.rejects).append(checked)  # type: ignore[arg-type]
    if valid:
        answer = await predict_with_retries(predict, valid, attempts, backoff_s)
        if isinstance(answer, str):
            part.rejects.extend(Reject(r.line, r.entity_key, answer) for r in valid)
        else:
            part.rows = answer
    part.rejects.sort(key=lambda r: r.line)
    return part


async def run_scoring(
    rows: Iterable[RawRow],
    schema: RowSchema,
    predict: PredictFn,
    checkpoint: Checkpoint,
    *,
    batch: int,
    in_flight: int,
    attempts: int = 3,
    backoff_s: float = 0.2,
    on_progress: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> ScoringSummary:
    """Score every chunk not already checkpointed, at most `in_flight` at once. Returns when all are saved;
    on cancellation (Ctrl-C) the in-flight chunks are dropped and the saved ones stay for the next run."""
    done = checkpoint.open()
    summary = ScoringSummary(resumed_chunks=len(done))
    slots = asyncio.Semaphore(in_flight)
    pending: set[asyncio.Task[None]] = set()
    saved_now = 0
    failure: list[BaseException] = []

    async def work(index: int, raw: list[RawRow]) -> None:
        nonlocal saved_now
        try:
            part = await score_chunk(index, raw, schema, predict, attempts, backoff_s)
            if stop_after is not None and saved_now >= stop_after:
                return
            checkpoint.save(part, done)
            saved_now += 1
            if on_progress:
                on_progress(len(raw))
        finally:
            slots.release()

    try:
        for index, raw in chunks(rows, batch):
            summary.chunks += 1
            if index in done:
                if on_progress:
                    on_progress(len(raw))
                continue
            await slots.acquire()
            if failure or (stop_after is not None and saved_now >= stop_after):
                slots.release()
                break
            task = asyncio.create_task(work(index, raw))
            pending.add(task)
            task.add_done_callback(lambda t: _finished(t, pending, failure))
        if pending:
            await asyncio.gather(*pending)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if stop_after is not None and saved_now >= stop_after and len(done) < summary.chunks:
        raise ScoringInterrupted(f"stopped after {saved_now} chunk(s)")
    if failure:
        raise failure[0]
    return summary


def _finished(
    task: asyncio.Task[None], pending: set[asyncio.Task[None]], failure: list[BaseException]
) -> None:
    pending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        failure.append(task.exception())  # type: ignore[arg-type]
