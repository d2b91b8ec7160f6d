"""The benchmark's arithmetic: percentiles, ratios to direct, Triton's average batch size, the targets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.report import average_batch, check_targets, compare, percentile, ratio, summarize


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_interpolates_like_numpy(q):
    values = [0.004, 0.001, 0.003, 0.010, 0.002, 0.0025, 0.007]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan_and_out_of_range_q_is_refused():
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_ratio_is_none_without_a_usable_baseline():
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(3.0, 0) is None and ratio(None, 4.0) is None and ratio(3.0, None) is None


def test_average_batch_is_rows_over_executions_in_the_window():
    assert average_batch((100, 40), (164, 44)) == 16.0
    assert average_batch((100, 40), (100, 40)) is None  # nothing reached Triton (cache hits)


def test_summary_and_comparison_with_direct():
    direct = summarize("direct", 16, [0.002] * 99 + [0.004], 0, 1.0, (0, 0), (100, 10))
    mesh = summarize("gateway-infer", 16, [0.003] * 80, 2, 1.0, (100, 10), (180, 20))
    assert (direct.throughput_rps, direct.p50_ms, direct.avg_batch) == (100.0, 2.0, 10.0)
    assert (mesh.requests, mesh.errors, mesh.avg_batch) == (82, 2, 8.0)
    c = compare(mesh, direct)
    assert c.throughput_ratio == pytest.approx(0.8)
    assert c.p50_added_ms == pytest.approx(1.0)
    assert c.batch_ratio == pytest.approx(0.8)
    assert compare(mesh, None).throughput_ratio is None


def test_targets_are_checked_at_their_concurrency_and_unmeasured_ones_say_so():
    direct = summarize("direct", 16, [0.002] * 100, 0, 1.0, (0, 0), (100, 10))
    mesh = summarize("gateway-infer", 16, [0.003] * 80, 0, 1.0, (0, 0), (80, 8))
    by_metric = {(t["scenario"], t["metric"]): t for t in check_targets([direct, mesh])}
    assert by_metric["gateway-infer", "throughput_ratio"]["met"] is True  # 0.80 >= 0.75
    assert by_metric["gateway-infer", "batch_ratio"]["met"] is True  # 1.00 >= 0.95
    assert by_metric["gateway-infer", "p50_added_ms"]["met"] is None  # concurrency 1 not run
