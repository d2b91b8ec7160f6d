"""The monitor's Prometheus view, computed at scrape time on the service's loop from a scrape thread: the gauges
per route, variant and version equal GetQuality's numbers, a variant both served and shadowed at one version shows
once, and the counters follow the handler's."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.monitor.collector import QualityCollector, exported_series
from services.monitor.handler import MonitorHandler
from services.monitor.records import IncomingLabel, Record, Task
from services.monitor.sqlite_store import SqliteStore

NOW = 1_750_000_000.0


@pytest.fixture
async def handler(tmp_path):
    store = SqliteStore(str(tmp_path / "m.db"))
    yield MonitorHandler(
        store, retention_s=1e9, max_records=10**6, label_grace_s=60, max_records_per_request=10_000,
        clock=lambda: NOW,
    )  # fmt: skip
    await store.close()


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_scrape_shows_quality_per_route_variant_and_version(handler):
    records = []
    for i in range(40):
        score = (i % 10) / 10
        records.append(
            Record(f"p{i}", "fraud", "stable", "fraud", "1", "model", NOW - 100 - i, score, False, 1, 0.5)
        )
        # the same variant and version also answering as a shadow: shown once, as served
        records.append(
            Record(f"p{i}", "fraud", "stable-shadow", "fraud", "1", "model", NOW - 100, score, True, 1, 0.5)
        )
        records.append(
            Record(f"r{i}", "price", "stable", "price", "7", "model", NOW - 10, 10.0 + i, False, 2, 0.0)
        )
    records.append(Record("old", "fraud", "stable", "fraud", "1", "model", NOW - 7200, 0.5, False, 1, 0.5))
    await handler.log_predictions(records)
    labels = [IncomingLabel(f"p{i}", float(i % 10 >= 5), NOW - 50) for i in range(0, 40, 2)]
    labels += [IncomingLabel(f"r{i}", 12.0 + i, 0.0) for i in range(40)] + [IncomingLabel("p0", 1.0, 0.0)]
    await handler.send_feedback(labels, correct=False)
    await handler.log_predictions(records[:3])  # repeats

    collector = QualityCollector(handler, window_s=3600)
    collector.loop = asyncio.get_running_loop()
    registry = CollectorRegistry()
    registry.register(collector)
    found = await asyncio.to_thread(samples, registry)  # as the metrics server's thread scrapes

    quality = await handler.quality("fraud", window_s=3600)
    stable = next(v for v in quality.variants if v.variant == "stable")
    key = (("route", "fraud"), ("variant", "stable"), ("version", "1"))
    assert found["meshserve_quality_predictions", key] == 40  # the one older than the window is not counted
    assert found["meshserve_quality_labels", key] == 20
    assert found["meshserve_quality_auc", key] == pytest.approx(stable.binary.auc, abs=1e-12)
    assert found["meshserve_quality_log_loss", key] == pytest.approx(stable.binary.log_loss, abs=1e-12)
    assert found["meshserve_quality_label_coverage", key] == 0.5
    assert found["meshserve_quality_label_delay_seconds", (("quantile", "0.5"), *key)] == pytest.approx(
        stable.labels.delay_p50_s
    )
    actual = (("kind", "actual"), *key)
    assert found["meshserve_quality_positive_rate", actual] == 0.4  # labels 6 and 8 of 0-8
    price = (("route", "price"), ("variant", "stable"), ("version", "7"))
    assert (found["meshserve_quality_mae", price], found["meshserve_quality_rmse", price]) == (2.0, 2.0)
    assert ("meshserve_quality_auc", price) not in found
    shadowed = (("route", "fraud"), ("variant", "stable-shadow"), ("version", "1"))
    assert found["meshserve_quality_predictions", shadowed] == 40
    assert found["meshserve_monitor_records_total", (("outcome", "stored"),)] == 121
    assert found["meshserve_monitor_records_total", (("outcome", "duplicate"),)] == 3
    assert found["meshserve_monitor_labels_total", (("outcome", "accepted"),)] == 60
    assert found["meshserve_monitor_labels_total", (("outcome", "duplicate"),)] == 1
    assert {name for name, _ in found} == exported_series()  # what the dashboard may read, all of it shown


async def test_a_scrape_before_the_service_runs_still_answers_the_counters(handler):
    collector = QualityCollector(handler, window_s=3600)
    registry = CollectorRegistry()
    registry.register(collector)
    found = await asyncio.to_thread(samples, registry)
    assert found["meshserve_monitor_records_total", (("outcome", "stored"),)] == 0
    assert not any(name.startswith("meshserve_quality_") for name, _ in found)


async def test_scrapes_within_max_age_share_one_computation(handler):
    collector = QualityCollector(handler, window_s=3600, max_age_s=60)
    collector.loop = asyncio.get_running_loop()
    assert await asyncio.to_thread(collector._read) == []
    await handler.log_predictions(
        [Record("p", "fraud", "a", "m", "1", "model", NOW, 0.5, False, int(Task.BINARY), 0.5)]
    )
    assert await asyncio.to_thread(collector._read) == []  # the last computation is younger than max_age_s
    collector._last = (time.monotonic() - 61, [])
    assert [q.route for q in await asyncio.to_thread(collector._read)] == ["fraud"]
