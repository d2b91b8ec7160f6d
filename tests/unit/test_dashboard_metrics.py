"""Every metric the Grafana dashboard queries is one our code exports (read from the collectors themselves, not
a list kept by hand) or one of Triton's, and the panels for canary analysis, cache hit ratio, answers by tier,
drift and feature freshness are there."""

from __future__ import annotations

import inspect

from gateway.metrics import GatewayCollector
from meshserve.core.metrics import ServiceMetrics
from services.feature.service import FreshnessCollector
from services.monitor.collector import exported_series as monitor_series
from tests.unit.test_compose import DASHBOARD, SETTINGS, TRITON_METRICS, expressions, promql_metrics
from tests.unit.test_compose import dashboard as dashboard  # noqa: F401 - the fixture


class _Empty:
    """Any live state, empty, every optional part present: each family is yielded, with no samples."""

    def __getattr__(self, name: str) -> _Empty:
        return _Empty()

    def __call__(self, *args, **kwargs) -> _Empty:
        return _Empty()

    def __iter__(self):
        return iter(())

    def items(self):
        return iter(())

    def __float__(self) -> float:
        return 0.0


def exported_series(families) -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def our_series() -> set[str]:
    exported = set()
    for name in SETTINGS:
        exported |= exported_series(ServiceMetrics(name).registry.collect())
    parts = [_Empty() for _ in inspect.signature(GatewayCollector).parameters]
    exported |= exported_series(GatewayCollector(*parts).collect())
    exported |= exported_series(FreshnessCollector(_Empty()).collect())
    return exported


def test_every_metric_the_dashboard_queries_is_exported(dashboard):  # noqa: F811
    known = our_series() | monitor_series() | TRITON_METRICS
    for expr in expressions(dashboard):
        unknown = promql_metrics(expr) - known
        assert not unknown, f"{DASHBOARD.name}: {expr!r} reads {sorted(unknown)}, which nothing exports"


def test_the_dashboard_shows_canary_analysis_cache_tiers_drift_and_freshness(dashboard):  # noqa: F811
    used = set().union(*map(promql_metrics, expressions(dashboard)))
    wanted = {
        "meshserve_gateway_route_request_duration_seconds_bucket",  # p99 per route and variant
        "meshserve_gateway_route_requests_total",  # error rate per route and variant
        "meshserve_gateway_rollout_judged_error_rate",
        "meshserve_gateway_rollout_judged_p99_seconds",
        "meshserve_gateway_rollout_judged_requests",
        "meshserve_gateway_rollout_threshold",
        "meshserve_gateway_rollout_verdict",
        "meshserve_gateway_cache_lookups_total",  # cache hit ratio
        "meshserve_gateway_answers_total",  # answers by tier
        "meshserve_gateway_feature_drift_psi",  # drift
        "meshserve_feature_served_total",  # feature freshness
    }
    assert wanted <= used, f"no panel shows {sorted(wanted - used)}"
    assert wanted <= our_series(), f"not exported: {sorted(wanted - our_series())}"
