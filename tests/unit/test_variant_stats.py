"""VariantStats with an injected clock: memory bounded by the window's buckets whatever the request rate, error
rates exact, p99 within the histogram's documented bound, reads that change nothing."""

from __future__ import annotations

import random
import time

import pytest

from gateway.routing.stats import FLOOR_S, RATIO, VariantStats


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exact_p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_a_million_records_keep_the_structure_at_its_bucket_count():
    clock = Clock()
    stats = VariantStats(window_s=60, clock=clock, bucket_s=1.0)
    started = time.perf_counter()
    for n in range(1_000_000):
        clock.now += 0.0005  # 2,000 requests a second for 500 s: eight windows' worth
        stats.record("fraud", "canary", n % 10 != 0, 0.001 + (n % 100) / 10_000)
    elapsed = time.perf_counter() - started
    assert stats.held_buckets() <= 61  # one per second of the window, plus the one it starts in
    summary = stats.summary("fraud", "canary")
    assert summary.requests == pytest.approx(120_000, rel=0.02)  # only the last window counts
    assert summary.error_rate == pytest.approx(0.1, abs=0.001)
    assert stats.totals[("fraud", "canary")] == [1_000_000, 100_000]  # totals are since start
    assert elapsed < 30, elapsed  # recording stays cheap


def test_buckets_of_a_variant_that_stops_receiving_traffic_stay_bounded_and_leave_the_window():
    clock = Clock()
    stats = VariantStats(window_s=10, clock=clock)
    for _ in range(100):
        stats.record("r", "v", True, 0.01)
        clock.now += 1
    assert stats.held_buckets() <= 11
    clock.now += 11
    assert stats.summary("r", "v").requests == 0
    assert stats.held_buckets() <= 11  # a read never trims, nor grows, anything


def test_error_rate_is_exact_and_old_outcomes_leave_the_window():
    clock = Clock()
    stats = VariantStats(window_s=30, clock=clock)
    for n in range(300):  # 300 requests in 27 s, every third one failed
        stats.record("r", "v", n % 3 != 0, 0.01)
        clock.now += 0.09
    summary = stats.summary("r", "v")
    assert (summary.requests, summary.errors) == (300, 100)
    assert summary.error_rate == pytest.approx(1 / 3)
    clock.now += 31
    for _ in range(10):
        stats.record("r", "v", True, 0.01)
    summary = stats.summary("r", "v")
    assert (summary.requests, summary.errors) == (10, 0)


def test_p99_is_never_below_the_exact_value_and_at_most_ten_percent_above():
    rng = random.Random(7)
    for shape in ("lognormal", "bimodal", "uniform"):
        clock = Clock()
        stats = VariantStats(window_s=60, clock=clock)
        latencies = []
        for _ in range(20_000):
            if shape == "lognormal":
                latency = rng.lognormvariate(-4, 0.8)
            elif shape == "bimodal":
                latency = 0.002 if rng.random() < 0.97 else rng.uniform(0.2, 0.4)
            else:
                latency = rng.uniform(0.001, 0.05)
            latencies.append(latency)
            stats.record("r", "v", True, latency)
            clock.now += 0.002
        exact, approx = exact_p99(latencies), stats.summary("r", "v").p99_s
        assert exact * (1 - 1e-9) <= approx <= exact * RATIO, (shape, exact, approx)


def test_p99_of_zero_latencies_reads_as_the_histogram_floor():
    clock = Clock()
    stats = VariantStats(clock=clock)
    for _ in range(10):
        stats.record("r", "v", True, 0.0)
    assert stats.summary("r", "v").p99_s == FLOOR_S
    assert stats.summary("r", "other").p99_s == 0.0


def test_since_counts_from_the_bucket_it_falls_in():
    clock = Clock(100.0)
    stats = VariantStats(window_s=60, clock=clock)
    for _ in range(5):
        stats.record("r", "v", False, 0.01)
    clock.now = 103.5
    since = clock.now
    for _ in range(7):
        stats.record("r", "v", True, 0.01)
    clock.now = 104.2
    summary = stats.summary("r", "v", since=since)
    assert (summary.requests, summary.errors) == (7, 0)
    assert stats.summary("r", "v").requests == 12


def test_forget_starts_the_window_afresh_and_keeps_totals():
    clock = Clock()
    stats = VariantStats(clock=clock)
    stats.record("r", "v", False, 0.01)
    stats.forget("r", "v")
    assert stats.summary("r", "v").requests == 0
    assert stats.totals[("r", "v")] == [1, 1]
    assert stats.held_buckets() == 0


def test_reads_never_create_entries():
    stats = VariantStats(clock=Clock())
    stats.summary("r", "v")
    stats.forget("r", "v")
    assert stats.held_buckets() == 0 and stats.totals == {}
