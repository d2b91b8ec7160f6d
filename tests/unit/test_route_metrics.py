"""Per-route, per-variant request metrics for Flagger- or Argo-style analysis: exported from the VariantStats the
canary judge reads, so Prometheus counts exactly what the judge counts; the histogram is Prometheus' own form."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayCollector
from gateway.routing.dispatch import Dispatcher
from gateway.routing.shadow import ShadowRunner
from gateway.routing.stats import LatencyTotals, VariantStats
from gateway.serving.prediction_cache import PredictionCache
from meshserve.core.metrics import LATENCY_BUCKETS


def collector(live, stats: VariantStats, rollouts) -> GatewayCollector:
    """The gateway's collector over this live state; the parts a test does not look at are empty."""
    return GatewayCollector(
        live, Dispatcher(stats=stats), ShadowRunner(), rollouts, PredictionCache(None, 0.05)
    )


def families(stats: VariantStats) -> dict:
    class NoRoutes:
        served: dict = {}

    class NoRollouts:
        states: dict = {}
        shadow_looks: dict = {}

    registry = CollectorRegistry()
    registry.register(collector(NoRoutes(), stats, NoRollouts()))
    text = generate_latest(registry).decode()  # through the exposition format, as Prometheus reads it
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(family, **labels) -> dict[str, float]:
    """name{le} -> value of the family's samples carrying `labels`."""
    out = {}
    for s in family.samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            out[s.name + (f"{{le={s.labels['le']}}}" if "le" in s.labels else "")] = s.value
    return out


def test_latency_totals_count_each_call_in_the_first_bucket_that_holds_it():
    totals = LatencyTotals()
    stats = VariantStats()
    for latency in (
        0.0001,
        0.0005,
        0.0006,
        0.004,
        5.0,
        7.0,
    ):  # 0.0005 and 5.0 sit on a bound: `le` holds them
        stats.record("r", "v", True, latency)
        totals = stats.latency_totals[("r", "v")]
    cumulative = dict(totals.cumulative())
    assert list(cumulative) == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert cumulative["0.0005"] == 2 and cumulative["0.001"] == 3 and cumulative["0.005"] == 4
    assert cumulative["5.0"] == 5 and cumulative["+Inf"] == 6
    assert totals.sum_s == pytest.approx(0.0001 + 0.0005 + 0.0006 + 0.004 + 5.0 + 7.0)


def test_route_metrics_count_what_the_judge_counts():
    stats = VariantStats()
    for n in range(50):
        stats.record("fraud", "canary", n % 5 != 0, 0.002)
        stats.record("fraud", "stable", True, 0.02)
    exported = families(stats)
    requests = exported["meshserve_gateway_route_requests"]
    assert requests.type == "counter"
    assert samples(requests, route="fraud", variant="canary", outcome="ok") == {
        "meshserve_gateway_route_requests_total": 40
    }
    assert samples(requests, route="fraud", variant="canary", outcome="error") == {
        "meshserve_gateway_route_requests_total": 10
    }
    window = stats.summary("fraud", "canary")  # the judge's view: the same calls, the same errors
    assert (window.requests, window.errors) == (50, 10)

    duration = exported["meshserve_gateway_route_request_duration_seconds"]
    assert duration.type == "histogram"
    canary = samples(duration, route="fraud", variant="canary")
    name = "meshserve_gateway_route_request_duration_seconds"
    assert canary[f"{name}_count"] == 50 == canary[f"{name}_bucket{{le=+Inf}}"]
    assert canary[f"{name}_bucket{{le=0.001}}"] == 0 and canary[f"{name}_bucket{{le=0.0025}}"] == 50
    assert canary[f"{name}_sum"] == pytest.approx(0.1)
    stable = samples(duration, route="fraud", variant="stable")
    assert stable[f"{name}_bucket{{le=0.01}}"] == 0 and stable[f"{name}_bucket{{le=0.025}}"] == 50


def test_a_p99_from_the_histogram_agrees_with_the_judges_to_its_bucket():
    stats = VariantStats()
    for n in range(1000):
        stats.record("r", "v", True, 0.001 + n / 1000 * 0.2)  # uniform over 1-201 ms: p99 ~199 ms
    judged = stats.summary("r", "v").p99_s
    cumulative = stats.latency_totals[("r", "v")].cumulative()
    rank = 0.99 * cumulative[-1][1]
    le = next(float(bound) for bound, seen in cumulative if seen >= rank)  # histogram_quantile's bucket
    lower = max([b for b in LATENCY_BUCKETS if b < le], default=0.0)
    assert lower < judged <= le * 1.1, (lower, judged, le)
    assert not math.isinf(le)


def test_no_calls_export_no_series():
    exported = families(VariantStats())
    assert exported["meshserve_gateway_route_requests"].samples == []
    assert exported["meshserve_gateway_route_request_duration_seconds"].samples == []
