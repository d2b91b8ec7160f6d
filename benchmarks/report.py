"""Numbers from a benchmark run: pure statistics, ratios to `direct`, the targets, a rich table and JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich import box
from rich.table import Table

__all__ = [
    "TARGETS",
    "Comparison",
    "Summary",
    "average_batch",
    "check_targets",
    "compare",
    "percentile",
    "ratio",
    "results_table",
    "run_info",
    "summarize",
    "write_json",
]

BASELINE = "direct"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(value) or math.isnan(baseline):
        return None
    return value / baseline


def average_batch(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Triton's average batch size over a window: rows inferred / batches executed (None if none ran)."""
    rows, executions = after[0] - before[0], after[1] - before[1]
    return rows / executions if executions > 0 else None


@dataclass(frozen=True)
class Summary:
    scenario: str
    concurrency: int
    requests: int
    errors: int
    elapsed_s: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    triton_rows: int
    triton_executions: int
    avg_batch: float | None
    cache_hits: int
    first_error: str | None = None


def summarize(
    scenario: str,
    concurrency: int,
    latencies_s: Sequence[float],
    errors: int,
    elapsed_s: float,
    counts_before: tuple[int, int],
    counts_after: tuple[int, int],
    cache_hits: int = 0,
    first_error: str | None = None,
) -> Summary:
    ok = len(latencies_s)
    return Summary(
        scenario=scenario,
        concurrency=concurrency,
        requests=ok + errors,
        errors=errors,
        elapsed_s=elapsed_s,
        throughput_rps=ok / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=percentile(latencies_s, 50) * 1e3,
        p99_ms=percentile(latencies_s, 99) * 1e3,
        mean_ms=sum(latencies_s) / ok * 1e3 if ok else math.nan,
        triton_rows=counts_after[0] - counts_before[0],
        triton_executions=counts_after[1] - counts_before[1],
        avg_batch=average_batch(counts_before, counts_after),
        cache_hits=cache_hits,
        first_error=first_error,
    )


@dataclass(frozen=True)
class Comparison:
    throughput_ratio: float | None
    p50_added_ms: float | None
    p99_added_ms: float | None
    batch_ratio: float | None


def compare(result: Summary, baseline: Summary | None) -> Comparison:
    """`result` against `direct` at the same concurrency."""
    if baseline is None:
        return Comparison(None, None, None, None)
    return Comparison(
        throughput_ratio=ratio(result.throughput_rps, baseline.throughput_rps),
        p50_added_ms=result.p50_ms - baseline.p50_ms,
        p99_added_ms=result.p99_ms - baseline.p99_ms,
        batch_ratio=ratio(result.avg_batch, baseline.avg_batch),
    )


def comparisons(results: Sequence[Summary]) -> list[Comparison]:
    baselines = {r.concurrency: r for r in results if r.scenario == BASELINE}
    return [compare(r, baselines.get(r.concurrency)) for r in results]


# (what, scenario, concurrency, Comparison field, "min" or "max", threshold)
# fmt: off
TARGETS = [
    ("gateway ModelInfer throughput >= 0.75x direct", "gateway-infer", 16, "throughput_ratio", "min", 0.75),
    ("gateway ModelInfer added p50 <= 0.5 ms", "gateway-infer", 1, "p50_added_ms", "max", 0.5),
    ("Triton avg batch via gateway ModelInfer >= 0.95x direct", "gateway-infer", 16, "batch_ratio", "min", 0.95),
    ("Triton avg batch via Predict (miss) >= 0.95x direct", "gateway-predict", 16, "batch_ratio", "min", 0.95),
    ("Predict, 90 % cache hits, throughput >= 3x direct", "gateway-predict-90hit", 16, "throughput_ratio", "min", 3.0),
]
# all misses with the cache on, against the same path with the cache off (not against direct)
CACHE_OVERHEAD = ("Predict all-miss, cache on vs off >= 0.95", "gateway-predict", "gateway-predict-nocache", 16, 0.95)
# fmt: on


def check_targets(results: Sequence[Summary]) -> list[dict]:
    """Each target with the measured value and whether it was met (None when not measured)."""
    found = {(r.scenario, r.concurrency): c for r, c in zip(results, comparisons(results), strict=True)}
    checked = []
    for what, scenario, concurrency, metric, kind, threshold in TARGETS:
        comparison = found.get((scenario, concurrency))
        value = getattr(comparison, metric) if comparison else None
        met = None if value is None else (value >= threshold if kind == "min" else value <= threshold)
        checked.append({"target": what, "scenario": scenario, "concurrency": concurrency, "metric": metric,
                        "threshold": threshold, "value": value, "met": met})  # fmt: skip
    what, on, off, concurrency, threshold = CACHE_OVERHEAD
    by_name = {(r.scenario, r.concurrency): r for r in results}
    cached, uncached = by_name.get((on, concurrency)), by_name.get((off, concurrency))
    value = ratio(cached.throughput_rps, uncached.throughput_rps) if cached and uncached else None
    met = None if value is None else value >= threshold
    checked.append({"target": what, "scenario": on, "concurrency": concurrency, "metric": f"throughput / {off}",
                    "threshold": threshold, "value": value, "met": met})  # fmt: skip
    return checked


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{spec}}{suffix}"


def results_table(results: Sequence[Summary]) -> Table:
    table = Table(
        title="meshserve vs direct Triton (x dir / + : against direct at the same concurrency)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    headers = ("scenario", "conc", "req/s", "x dir", "p50 ms", "+p50", "p99 ms", "+p99", "errors",
               "batch", "x dir", "cache hits")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    for r, c in zip(results, comparisons(results), strict=True):
        table.add_row(
            r.scenario,
            str(r.concurrency),
            _fmt(r.throughput_rps, ",.0f"),
            _fmt(c.throughput_ratio, ".2f"),
            _fmt(r.p50_ms, ".2f"),
            _fmt(c.p50_added_ms, "+.2f"),
            _fmt(r.p99_ms, ".2f"),
            _fmt(c.p99_added_ms, "+.2f"),
            str(r.errors),
            _fmt(r.avg_batch, ".2f"),
            _fmt(c.batch_ratio, ".2f"),
            f"{r.cache_hits / max(r.requests - r.errors, 1):.0%}",
        )
    return table


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def run_info(repo: Path) -> dict:
    """When, what and where: the context a number needs to be compared with another."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(repo),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in ("grpcio", "tritonclient", "nvidia-pytriton", "protobuf", "uvloop")},
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "executable": sys.executable,
        },
    }


def write_json(path: Path, info: dict, settings: dict, results: Sequence[Summary]) -> Path:
    rows = [{**asdict(r), "vs_direct": asdict(c)} for r, c in zip(results, comparisons(results), strict=True)]
    document = {**info, "settings": settings, "results": rows, "targets": check_targets(results)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_without_nan(document), indent=2, allow_nan=False) + "\n")
    return path


def _without_nan(value: object) -> object:
    """NaN (no successful request) becomes null, so the file stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    return value
