"""Bulk scoring in the benchmark: `meshserve score` over a generated file through the same mesh, rows per second
and CPU microseconds per row by process (the scoring client is this process)."""

from __future__ import annotations

import csv
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich import box
from rich.table import Table

from benchmarks.cpu import CpuMeter
from meshserve.cli.score import run_score

__all__ = ["BulkResult", "bulk_table", "measure_bulk_score", "write_accounts_file"]

ROUTE = "fraud"
BATCH, IN_FLIGHT = 512, 8  # the CLI's defaults: what a user gets


@dataclass(frozen=True)
class BulkResult:
    rows: int
    rejects: int
    elapsed_s: float
    batch: int
    in_flight: int
    cpu_us_per_row: dict[str, float]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "rows_per_s": self.rows_per_s}


def write_accounts_file(path: Path, rows: int, seed: int = 20261202) -> Path:
    """Sample accounts with request-time features; amounts are unique enough that no row is a cache hit."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["account_id", "amount", "merchant_category"])
        for _ in range(rows):
            writer.writerow(
                [f"acct-{rng.randrange(1, 200):05d}", f"{rng.uniform(1, 5000):.4f}", rng.randrange(10)]
            )
    return path


async def measure_bulk_score(gateway: str, cpu: CpuMeter, rows: int, work_dir: Path) -> BulkResult:
    source = write_accounts_file(work_dir / "bulk.csv", rows)
    out = work_dir / "bulk.scored.parquet"
    cpu.start()
    started = time.perf_counter()
    summary = await run_score(source, ROUTE, out, gateway, BATCH, IN_FLIGHT, quiet=True)
    elapsed = time.perf_counter() - started
    used = cpu.stop()
    scored = max(summary.rows, 1)
    return BulkResult(summary.rows, summary.rejects, elapsed, BATCH, IN_FLIGHT,
                      {name: seconds * 1e6 / scored for name, seconds in used.items()})  # fmt: skip


def bulk_table(result: BulkResult) -> Table:
    table = Table(title="bulk scoring (meshserve score)", box=box.SIMPLE_HEAD, padding=(0, 1))
    names = sorted(result.cpu_us_per_row)
    for header in ("rows", "rejects", "rows/s", "batch x in flight", *(f"{n} µs/row" for n in names)):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_row(
        f"{result.rows:,}", str(result.rejects), f"{result.rows_per_s:,.0f}", f"{result.batch} x {result.in_flight}",
        *(f"{result.cpu_us_per_row[n]:.1f}" for n in names),
    )  # fmt: skip
    return table
