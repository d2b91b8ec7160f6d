"""The benchmark's prediction-log figures: counters read from a gateway's metrics, the monitor's CPU per logged
prediction, log on vs off per pair of scenarios, their targets, and the routes each pair runs on."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from rich.console import Console

from benchmarks.logcost import LOG_PAIRS, counts_delta, log_costs, log_counts, log_table
from benchmarks.report import check_targets, summarize
from benchmarks.scenarios import NOCACHE_ROUTE, NOLOG_ROUTE, SCENARIOS, bench_routes
from gateway.routing.routes import parse_routes
from meshserve.defaults import load_yaml


class _Gateway(Collector):
    """What a gateway's scrape holds around its prediction-log counters."""

    def __init__(self, logged: int, dropped: int) -> None:
        self.counts = {"logged": logged, "dropped": dropped, "failed": 0, "unreadable": 0}

    def collect(self):
        records = CounterMetricFamily(
            "meshserve_gateway_prediction_log_records", "answers for the log", labels=["outcome"]
        )
        for outcome, count in self.counts.items():
            records.add_metric([outcome], count)
        yield records
        other = CounterMetricFamily("meshserve_gateway_requests", "requests", labels=["outcome"])
        other.add_metric(["logged"], 999)  # the same label value on another family is not counted
        yield other
        yield HistogramMetricFamily("meshserve_gateway_latency_seconds", "latency", buckets=[("+Inf", 3)],
                                    sum_value=0.1)  # fmt: skip


def _scrape(collector: Collector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_log_counts_read_the_prediction_log_counters_by_outcome():
    assert log_counts(_scrape(_Gateway(1234, 5))) == {
        "logged": 1234,
        "dropped": 5,
        "failed": 0,
        "unreadable": 0,
    }
    assert log_counts("") == {}  # a gateway without the log


def test_counts_delta_is_after_minus_before_per_outcome():
    before = {"logged": 100, "dropped": 2}
    after = {"logged": 1100, "dropped": 2, "failed": 1}  # an outcome first seen after
    assert counts_delta(before, after) == {"logged": 1000, "dropped": 0, "failed": 1}
    assert counts_delta({}, {}) == {}


def test_monitor_cpu_per_logged_prediction_is_its_window_cpu_over_what_it_took():
    # 100 answered (2 errors), the monitor used 0.05 s and took 80 predictions: 625 µs each
    r = summarize("gateway-predict", 16, [0.002] * 100, 2, 1.0, (0, 0), (100, 10),
                  cpu_s={"monitor": 0.05, "gateway": 0.03}, prediction_log={"logged": 80, "dropped": 1})  # fmt: skip
    assert r.cpu_us["monitor"] == pytest.approx(500.0)
    assert r.monitor_cpu_per_logged_us == pytest.approx(625.0)
    nothing = summarize("gateway-predict-nolog", 16, [0.002] * 100, 0, 1.0, (0, 0), (100, 10),
                        cpu_s={"monitor": 0.001}, prediction_log={"logged": 0})  # fmt: skip
    assert nothing.monitor_cpu_per_logged_us is None
    unread = summarize("direct", 16, [0.002] * 100, 0, 1.0, (0, 0), (100, 10), cpu_s={"monitor": 0.001})
    assert unread.prediction_log == {} and unread.monitor_cpu_per_logged_us is None


def _pair(concurrency: int, gateway_on_s: float, gateway_off_s: float, rate: float | None = None):
    on = summarize("gateway-predict", concurrency, [0.002] * 100, 0, 1.0, (0, 0), (100, 10),
                   cpu_s={"gateway": gateway_on_s, "inference": 0.01, "monitor": 0.02},
                   prediction_log={"logged": 100, "dropped": 0}, rate_rps=rate)  # fmt: skip
    off = summarize("gateway-predict-nolog", concurrency, [0.002] * 125, 0, 1.0, (0, 0), (125, 10),
                    cpu_s={"gateway": gateway_off_s, "inference": 0.0125, "monitor": 0.0}, rate_rps=rate)  # fmt: skip
    return on, off


def test_log_costs_pair_each_log_on_scenario_with_its_twin_at_the_same_concurrency():
    on16, off16 = _pair(16, 0.033, 0.0375)  # 330 vs 300 µs per request
    on1, _ = _pair(1, 0.05, 0.05)  # no twin at 1: no row
    open_on, open_off = _pair(0, 0.05, 0.05, rate=100.0)  # open loop: no row
    [cost] = log_costs([on1, on16, off16, open_on, open_off])
    assert (cost.on, cost.off, cost.concurrency) == ("gateway-predict", "gateway-predict-nolog", 16)
    assert cost.throughput_ratio == pytest.approx(0.8)
    assert (cost.gateway_cpu_on_us, cost.gateway_cpu_off_us) == (pytest.approx(330.0), pytest.approx(300.0))
    assert cost.gateway_cpu_ratio == pytest.approx(1.1)
    assert cost.mesh_cpu_ratio == pytest.approx(430.0 / 400.0)
    assert (cost.monitor_cpu_us, cost.logged, cost.dropped) == (pytest.approx(200.0), 100, 0)
    assert cost.monitor_cpu_per_logged_us == pytest.approx(200.0)
    text = _render(log_table([cost]))
    assert "gateway-predict" in text and "1.10" in text and "200.0" in text


def _render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_the_log_on_off_targets_compare_gateway_cpu_at_16():
    on, off = _pair(16, 0.0345, 0.03)  # 345 vs 240 µs: 1.44x
    by_name = {t["target"]: t for t in check_targets([on, off])}
    predict = by_name["gateway CPU per Predict, prediction log on / off, c=16"]
    assert predict["value"] == pytest.approx(345.0 / 240.0) and predict["met"] is False
    assert by_name["gateway CPU per ModelInfer, prediction log on / off, c=16"]["met"] is None  # not run
    on, off = _pair(16, 0.025, 0.03)  # 250 vs 240 µs: 1.04x
    assert {t["target"]: t for t in check_targets([on, off])}[predict["target"]]["met"] is True


def test_each_pair_runs_on_routes_that_differ_in_the_log_alone():
    embedded = load_yaml(None, "routes.yaml")
    routes = bench_routes(embedded)
    fraud = routes["routes"]["fraud"]
    assert fraud["quality"]["enabled"] is True  # the sample route logs: the pair measures something
    nolog, nocache = routes["routes"][NOLOG_ROUTE], routes["routes"][NOCACHE_ROUTE]
    assert {**nolog, "quality": fraud["quality"]} == fraud
    assert nolog["quality"] == {**fraud["quality"], "enabled": False}
    assert {**nocache, "cache": fraud["cache"]} == fraud and nocache["cache"]["enabled"] is False
    table = parse_routes(routes, "bench routes")  # the gateway accepts them
    assert table.routes[NOLOG_ROUTE].logged is None and table.routes["fraud"].logged is not None
    assert table.routes[NOCACHE_ROUTE].logged is not None and not table.routes[NOCACHE_ROUTE].cache.enabled
    assert NOLOG_ROUTE not in embedded["routes"]  # the embedded routes are left as they were
    for on, off in LOG_PAIRS:
        assert on in SCENARIOS and off == f"{on}-nolog" in SCENARIOS  # the table names the twin so
