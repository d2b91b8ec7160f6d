"""The benchmark's arithmetic: percentiles, ratios to direct, Triton's average batch size, the targets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.report import (
    average_batch,
    check_targets,
    compare,
    comparisons,
    percentile,
    ratio,
    summarize,
)


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
    mesh = summarize("gateway-infer", 16, [0.003] * 80, 0, 1.0, (0, 0), (80, 8),
                     cpu_s={"gateway": 0.016, "inference": 0.004, "client": 0.01})  # fmt: skip
    envoy = summarize("envoy", 16, [0.002] * 90, 0, 1.0, (0, 0), (90, 9))
    by_target = {t["target"]: t for t in check_targets([direct, mesh, envoy])}
    assert by_target["gateway ModelInfer / direct, c=16"]["value"] == pytest.approx(0.8)
    assert by_target["gateway ModelInfer / direct, c=16"]["met"] is True  # 0.80 >= 0.5
    assert by_target["Triton average batch through the mesh / direct, c=16"]["met"] is True  # 1.00 >= 0.95
    # meshserve's own processes only (not the client): (16 + 4) ms / 80 requests = 250 us
    cpu = by_target["CPU per ModelInfer in meshserve's processes, us, c=16"]
    assert cpu["value"] == pytest.approx(250.0) and cpu["met"] is True
    assert by_target["gateway ModelInfer vs Envoy -> Triton, c=16"]["value"] == pytest.approx(80 / 90)
    assert by_target["gateway ModelInfer / direct, c=64"]["met"] is None  # concurrency 64 not run
    assert by_target["added p50 at c=1 (ModelInfer), ms"]["met"] is None


def test_ratios_are_taken_against_each_scenarios_own_baseline():
    dense_direct = summarize(
        "dense-direct", 16, [0.004] * 50, 0, 1.0, (0, 0), (50, 5), baseline="dense-direct"
    )
    dense = summarize("dense-gateway", 16, [0.004] * 45, 0, 1.0, (0, 0), (45, 5), baseline="dense-direct")
    direct = summarize("direct", 16, [0.001] * 1000, 0, 1.0, (0, 0), (1000, 100))
    compared = dict(zip(["dense-direct", "dense-gateway", "direct"],
                        comparisons([dense_direct, dense, direct]), strict=True))  # fmt: skip
    assert compared["dense-gateway"].throughput_ratio == pytest.approx(0.9)
    by_target = {t["target"]: t for t in check_targets([dense_direct, dense, direct])}
    assert by_target["compute-bound model, gateway ModelInfer / direct, c=16"]["met"] is True


def test_open_loop_spread_is_p99_over_p50():
    opened = summarize(
        "gateway-infer", 0, [0.001] * 98 + [0.01, 0.01], 0, 1.0, (0, 0), (0, 0), rate_rps=100.0
    )
    (spread,) = [t for t in check_targets([opened]) if t["target"].startswith("open loop")]
    assert spread["value"] == pytest.approx(opened.p99_ms / opened.p50_ms) and spread["met"] is False
    assert opened.label == "100/s"


def test_cpu_per_request_divides_by_answered_requests():
    result = summarize("gateway-infer", 16, [0.003] * 100, 5, 1.0, (0, 0), (100, 10),
                       cpu_s={"gateway": 0.02, "inference": 0.005, "client": 0.01})  # fmt: skip
    assert result.cpu_us == pytest.approx({"gateway": 200.0, "inference": 50.0, "client": 100.0})
    assert result.mesh_cpu_us == pytest.approx(250.0)
