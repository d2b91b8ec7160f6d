"""What the prediction log costs (issue 18): each log-on scenario against its twin on a copy of the route with the
log off, in the same run, and the monitor's CPU per prediction it took.

The gateways count what happens to each answer they hand to the log (`meshserve_gateway_prediction_log_records`,
by outcome); read before and after a measured window, outside it, the count `logged` is what the monitor took in
that window, the denominator of its CPU. (The monitor's own counter is on an endpoint whose scrape also computes
the quality gauges over every record of the last hour: too costly to read between windows.)
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.table import Table

from benchmarks.report import Summary, ratio

__all__ = ["LOG_PAIRS", "LogCost", "counts_delta", "log_costs", "log_counts", "log_table", "read_log_counts"]

# (log on, log off): the same requests on route fraud and on its copy with `quality` off
LOG_PAIRS = (("gateway-infer", "gateway-infer-nolog"), ("gateway-predict", "gateway-predict-nolog"))
LOG_SAMPLE = "meshserve_gateway_prediction_log_records_total"


def log_counts(text: str) -> dict[str, int]:
    """The prediction-log counters by outcome from one gateway's Prometheus text (empty: no log there)."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == LOG_SAMPLE:
                outcome = sample.labels["outcome"]
                counts[outcome] = counts.get(outcome, 0) + int(sample.value)
    return counts


def _scrape(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read().decode()


async def read_log_counts(urls: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
    """The counters summed over every gateway process (plain-HTTP metrics endpoints)."""
    total: dict[str, int] = {}
    for url in urls:
        for outcome, count in log_counts(await asyncio.to_thread(_scrape, url, timeout_s)).items():
            total[outcome] = total.get(outcome, 0) + count
    return total


def counts_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {outcome: after[outcome] - before.get(outcome, 0) for outcome in after}


@dataclass(frozen=True)
class LogCost:
    on: str  # the scenario with the log on
    off: str  # its twin with the log off
    concurrency: int
    throughput_ratio: float | None  # on / off
    gateway_cpu_on_us: float | None  # per answered request
    gateway_cpu_off_us: float | None
    gateway_cpu_ratio: float | None  # on / off: the log's cost where requests are served
    mesh_cpu_ratio: float | None  # on / off, meshserve's request path (gateway + services)
    monitor_cpu_us: float | None  # per answered request, log on
    logged: int  # predictions the monitor took during the log-on window
    dropped: int  # answers the gateways could not hand over (no room while the monitor was behind)
    monitor_cpu_per_logged_us: float | None


def log_costs(results: Sequence[Summary]) -> list[LogCost]:
    """One LogCost per pair and concurrency where both halves ran (closed loop), in the run's order."""
    closed = {(r.scenario, r.concurrency): r for r in results if r.rate_rps is None}
    costs = []
    for r in results:
        for on, off in LOG_PAIRS:
            twin = closed.get((off, r.concurrency))
            if r.scenario != on or r.rate_rps is not None or twin is None:
                continue
            costs.append(
                LogCost(
                    on=on,
                    off=off,
                    concurrency=r.concurrency,
                    throughput_ratio=ratio(r.throughput_rps, twin.throughput_rps),
                    gateway_cpu_on_us=r.cpu_us.get("gateway"),
                    gateway_cpu_off_us=twin.cpu_us.get("gateway"),
                    gateway_cpu_ratio=ratio(r.cpu_us.get("gateway"), twin.cpu_us.get("gateway")),
                    mesh_cpu_ratio=ratio(r.mesh_cpu_us, twin.mesh_cpu_us),
                    monitor_cpu_us=r.cpu_us.get("monitor"),
                    logged=r.prediction_log.get("logged", 0),
                    dropped=r.prediction_log.get("dropped", 0),
                    monitor_cpu_per_logged_us=r.monitor_cpu_per_logged_us,
                )
            )
    return costs


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def log_table(costs: Sequence[LogCost]) -> Table:
    table = Table(
        title="prediction log on / off: each scenario against its twin `<name>-nolog` (the route's copy with "
        "`quality` off); x = on/off; CPU µs per answered request; mon = the monitor",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
    )
    headers = ("log on", "conc", "req/s x", "gateway on", "off", "x", "meshserve x", "mon µs/req", "logged",
               "dropped", "mon µs/logged")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "log on" else "right", no_wrap=True)
    for c in costs:
        table.add_row(
            c.on,
            str(c.concurrency),
            _fmt(c.throughput_ratio, ".2f"),
            _fmt(c.gateway_cpu_on_us, ".0f"),
            _fmt(c.gateway_cpu_off_us, ".0f"),
            _fmt(c.gateway_cpu_ratio, ".2f"),
            _fmt(c.mesh_cpu_ratio, ".2f"),
            _fmt(c.monitor_cpu_us, ".1f"),
            f"{c.logged:,}",
            f"{c.dropped:,}",
            _fmt(c.monitor_cpu_per_logged_us, ".1f"),
        )
    return table
