"""Merging other gateways' published outcome buckets into one window: counts add, the p99 of the merged histogram
is the p99 of all samples within the histogram's resolution, and the window (and `since`) applies to them too."""

from __future__ import annotations

import json
import random

from gateway.routing.stats import RATIO, VariantStats, exported_buckets


def gateway(now: list[float]) -> VariantStats:
    return VariantStats(window_s=60.0, clock=lambda: now[0])


def through_json(stats: VariantStats, offset: float = 0.0, routes=None) -> list[dict]:
    return json.loads(json.dumps(stats.export(offset, routes)))  # as the store carries it


def test_counts_add_and_the_merged_p99_is_that_of_all_samples():
    rng = random.Random(7)
    now = [1000.0]
    gateways = [gateway(now) for _ in range(3)]
    samples = []
    for second in range(10):
        now[0] = 1000.0 + second + 0.5
        for i, stats in enumerate(gateways):
            for _ in range(50):
                latency = rng.lognormvariate(-4 + i, 0.5)  # each gateway its own latency profile
                ok = rng.random() > 0.1 * i
                stats.record("fraud", "canary", ok, latency)
                samples.append((ok, latency))
    local, *others = gateways
    extra = exported_buckets([through_json(g) for g in others], "fraud", "canary")
    merged = local.summary("fraud", "canary", extra=extra)
    assert merged.requests == len(samples) == 1500
    assert merged.errors == sum(not ok for ok, _ in samples)
    latencies = sorted(latency for _, latency in samples)
    exact = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    assert exact <= merged.p99_s <= exact * RATIO
    assert local.summary("fraud", "canary").requests == 500  # merging changed nothing held


def test_other_routes_variants_and_buckets_before_since_or_the_window_are_left_out():
    now = [1000.0]
    local, other = gateway(now), gateway(now)
    for second in range(100):
        now[0] = 1000.0 + second
        other.record("fraud", "canary", False, 0.01)
        other.record("fraud", "stable", True, 0.01)
        other.record("ads", "canary", True, 0.01)
    exports = [through_json(other)]
    assert sum(len(e["buckets"]) for e in exports[0]) == 3 * 61  # only the window's buckets are published
    assert {e["route"] for e in through_json(other, routes=["fraud"])} == {"fraud"}
    extra = exported_buckets(exports, "fraud", "canary")
    assert local.summary("fraud", "canary", extra=extra).requests == 61  # [now - 60 s, now], to the bucket
    # the same rule as for a gateway's own buckets: one that overlaps [since, now] counts
    since = now[0] - 9.5
    assert local.summary("fraud", "canary", since=since, extra=extra) == other.summary(
        "fraud", "canary", since=since
    )
    assert local.summary("fraud", "canary", since=since, extra=extra).requests == 11
    stable = local.summary("fraud", "stable", extra=exported_buckets(exports, "fraud", "stable"))
    assert (stable.requests, stable.errors) == (61, 0)
    assert exported_buckets(exports, "search", "canary") == []


def test_bucket_starts_move_between_clocks():
    # the publisher's monotonic clock reads 1000 at wall 5000; the judge's reads 200 then
    now, then = [1000.5], [200.5]
    other, local = gateway(now), gateway(then)
    other.record("fraud", "canary", False, 0.01)
    exported = through_json(other, offset=5000.0 - 1000.0)  # onto wall time
    assert exported[0]["buckets"][0][0] == 5000.0
    extra = exported_buckets([exported], "fraud", "canary", offset=200.0 - 5000.0)  # onto the judge's clock
    assert local.summary("fraud", "canary", since=200.0, extra=extra).errors == 1
    assert local.summary("fraud", "canary", since=201.5, extra=extra).errors == 0  # from before `since`
