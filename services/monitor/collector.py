"""Prometheus at scrape time: quality per route, variant and version over the last `window_s` (computed on the
service's event loop from the store, so a scrape costs what a GetQuality of every route costs: exact metrics read
every row of the window; hence `max_age_s`, within which scrapes share one computation), and the monitor's own
counts of records and labels since it started."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.monitor.handler import LABEL_OUTCOMES, RECORD_OUTCOMES, MonitorHandler, RouteQuality

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 10.0
LABELS = ["route", "variant", "version"]
_BINARY = {  # gauge name suffix -> BinaryQuality attribute
    "auc": "auc",
    "log_loss": "log_loss",
    "brier": "brier",
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
}


class QualityCollector(Collector):
    def __init__(self, handler: MonitorHandler, window_s: float, max_age_s: float = 0.0) -> None:
        self.handler = handler
        self.window_s = window_s
        self.max_age_s = max_age_s
        self.loop: asyncio.AbstractEventLoop | None = None  # the service's, set once it runs
        self._lock = threading.Lock()  # scrapes come on the metrics server's threads
        self._last: tuple[float, list[RouteQuality]] | None = None

    async def _qualities(self) -> list[RouteQuality]:
        return [await self.handler.quality(route, self.window_s) for route in await self.handler.routes()]

    def _read(self) -> list[RouteQuality]:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.max_age_s:
                return self._last[1]
            if self.loop is None or self.loop.is_closed():
                return []
            try:
                found = asyncio.run_coroutine_threadsafe(self._qualities(), self.loop).result(
                    SCRAPE_TIMEOUT_S
                )
            except Exception:  # a scrape must still answer the counters
                log.exception("quality metrics could not be computed")
                return []
            self._last = (time.monotonic(), found)
            return found

    def collect(self):
        records = CounterMetricFamily(
            "meshserve_monitor_records", "Prediction records by outcome", labels=["outcome"]
        )
        for outcome in RECORD_OUTCOMES:
            records.add_metric([outcome], self.handler.records[outcome])
        labels = CounterMetricFamily("meshserve_monitor_labels", "Labels by outcome", labels=["outcome"])
        for outcome in LABEL_OUTCOMES:
            labels.add_metric([outcome], self.handler.labels[outcome])
        yield records
        yield labels
        yield from self._quality_families(self._read())

    def _quality_families(self, qualities: list[RouteQuality]):
        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"meshserve_quality_{name}", doc, labels=LABELS + (extra or []))

        window = f"over the last {self.window_s:g} s"
        g = {name: gauge(name, f"{name} of labelled predictions {window}") for name in _BINARY}
        g["positive_rate"] = gauge(
            "positive_rate", f"share of positives {window}: predicted at the threshold, or actual", ["kind"]
        )
        g["calibration_error"] = gauge("calibration_error", f"expected calibration error (10 bins) {window}")
        g["mae"] = gauge("mae", f"mean absolute error {window}")
        g["rmse"] = gauge("rmse", f"root mean squared error {window}")
        g["label_coverage"] = gauge("label_coverage", f"share of predictions with a label {window}")
        g["label_delay_seconds"] = gauge(
            "label_delay_seconds", f"time from prediction to label {window}", ["quantile"]
        )
        g["predictions"] = gauge("predictions", f"predictions logged {window}")
        g["labels"] = gauge("labels", f"predictions labelled {window}")
        for q in qualities:
            seen = set()
            # a variant both served and shadowed at one version shows as served (series must be unique)
            for v in sorted(q.variants, key=lambda v: v.shadow):
                key = [q.route, v.variant, v.model_version]
                if tuple(key) in seen:
                    continue
                seen.add(tuple(key))
                g["predictions"].add_metric(key, v.labels.predictions)
                g["labels"].add_metric(key, v.labels.labelled)
                _maybe(g["label_coverage"], key, v.labels.coverage)
                _maybe(g["label_delay_seconds"], [*key, "0.5"], v.labels.delay_p50_s)
                _maybe(g["label_delay_seconds"], [*key, "0.9"], v.labels.delay_p90_s)
                if v.binary is not None:
                    for name, attribute in _BINARY.items():
                        _maybe(g[name], key, getattr(v.binary, attribute))
                    _maybe(g["positive_rate"], [*key, "predicted"], v.binary.predicted_positive_rate)
                    _maybe(g["positive_rate"], [*key, "actual"], v.binary.actual_positive_rate)
                    _maybe(g["calibration_error"], key, v.binary.calibration.expected_calibration_error)
                if v.regression is not None:
                    _maybe(g["mae"], key, v.regression.mae)
                    _maybe(g["rmse"], key, v.regression.rmse)
        yield from g.values()


def exported_series() -> frozenset[str]:
    """Every series name a scrape can show (the dashboard and its tests read them from here)."""
    gauges = [*_BINARY, "positive_rate", "calibration_error", "mae", "rmse", "label_coverage",
              "label_delay_seconds", "predictions", "labels"]  # fmt: skip
    counters = ("meshserve_monitor_records_total", "meshserve_monitor_labels_total")
    return frozenset({f"meshserve_quality_{name}" for name in gauges} | set(counters))


def _maybe(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)
