"""The rollout judge, simulated: 200 seeded rollouts per case, labels an hour late, a judge looking every 5 s.
Each case prints its measured rates (pytest -s shows them)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshserve.quality.auc import delong
from meshserve.quality.simulation import (
    Classifier,
    ErrorCase,
    Outcome,
    Plan,
    QualityCase,
    Summary,
    Traffic,
    simulate,
    summarise,
)

RUNS = 200
PLAN = Plan()  # 5 -> 25 -> 50 -> 100 %, an hour at least and 4 hours at most per step, 2000 samples a side
TRAFFIC = Traffic(requests_per_s=100.0, label_delay_s=3600.0, label_jitter_s=600.0)
STABLE = Classifier(auc=0.80, positive_rate=0.5)


def _measured(case, seed: int) -> Summary:
    summary = summarise(PLAN, TRAFFIC, case, RUNS, seed)
    print(f"\n{case}: {summary}")
    return summary


def test_a_canary_3_auc_points_worse_is_rolled_back():
    s = _measured(QualityCase(STABLE, Classifier(0.77), margin=0.01), seed=1)
    assert s.rolled_back >= 0.95


def test_an_equal_canary_is_seldom_rolled_back_and_mostly_promoted():
    s = _measured(QualityCase(STABLE, Classifier(0.80), margin=0.01), seed=2)
    assert s.rolled_back <= 0.05
    assert s.promoted >= 0.9


def test_a_canary_2_auc_points_better_is_promoted():
    s = _measured(QualityCase(STABLE, Classifier(0.82), margin=0.01), seed=3)
    assert s.promoted >= 0.9


def test_a_canary_exactly_at_the_auc_limit_is_rolled_back_within_alpha():
    """The hardest case for the false-rollback guarantee: the truth on the limit itself."""
    s = _measured(QualityCase(STABLE, Classifier(0.79), margin=0.01), seed=4)
    assert s.rolled_back <= PLAN.alpha


@pytest.mark.parametrize(
    ("canary_rate", "expect"),
    [(0.03, "rolled_back"), (0.01, "equal"), (0.005, "promoted"), (0.02, "at the limit")],
)
def test_error_rate_canaries(canary_rate, expect):
    s = _measured(ErrorCase(baseline_error_rate=0.01, canary_error_rate=canary_rate, margin=0.01), seed=5)
    if expect == "rolled_back":
        assert s.rolled_back >= 0.95
    elif expect == "equal":
        assert s.rolled_back <= 0.05 and s.promoted >= 0.9
    elif expect == "promoted":
        assert s.promoted >= 0.9
    else:
        assert s.rolled_back <= PLAN.alpha


def test_a_run_replays_from_its_seed_and_says_what_decided_it():
    case = QualityCase(STABLE, Classifier(0.77), margin=0.01)
    first = simulate(PLAN, TRAFFIC, case, np.random.default_rng([7, 0]))
    assert first == simulate(PLAN, TRAFFIC, case, np.random.default_rng([7, 0]))
    assert first.decision == "rolled_back" and first.comparison is not None
    assert first.comparison.verdict == "breach" and first.comparison.upper < -0.01
    assert first.at_s > TRAFFIC.label_delay_s - TRAFFIC.label_jitter_s  # nothing to judge before labels come
    promoted = simulate(PLAN, TRAFFIC, QualityCase(STABLE, Classifier(0.82)), np.random.default_rng([7, 1]))
    assert promoted.decision == "promoted" and promoted.step == len(PLAN.judged_steps) - 1
    assert promoted.at_s >= len(PLAN.judged_steps) * PLAN.interval_s  # each step ran its interval


def test_a_step_that_cannot_pass_within_its_longest_wait_expires():
    short = Plan(longest_wait_s=1800.0)  # labels take an hour: nothing arrives in time
    out = simulate(short, TRAFFIC, QualityCase(STABLE, STABLE), np.random.default_rng(0))
    assert out == Outcome("expired", 0, 1800.0, None)
    at_the_limit = simulate(
        PLAN, TRAFFIC, QualityCase(STABLE, Classifier(0.79)), np.random.default_rng([4, 0])
    )
    assert at_the_limit.decision == "expired" and at_the_limit.at_s == PLAN.longest_wait_s
    assert at_the_limit.comparison is not None and at_the_limit.comparison.verdict == "undecided"
    assert at_the_limit.comparison.lower < -0.01 < at_the_limit.comparison.upper


def test_labels_arrive_as_the_delay_distribution_integrates():
    """The expected labelled count of a step's stream, against drawing every request and its delay."""
    rng = np.random.default_rng(8)
    horizon, rate = 3 * 3600.0, 2.0
    times = np.array([2000.0, 3300.0, 3600.0, 4000.0, 9000.0])
    counts = []
    for _ in range(300):
        made = rng.uniform(0.0, horizon, rng.poisson(rate * horizon))
        delay = rng.uniform(3000.0, 4200.0, made.size)
        counts.append([(made + delay <= t).sum() for t in times])
    expected = rate * TRAFFIC.labelled_by(times)
    np.testing.assert_allclose(np.mean(counts, axis=0), expected, rtol=0.02, atol=1.0)
    np.testing.assert_allclose(np.var(counts, axis=0), expected, rtol=0.25, atol=2.0)  # Poisson: var = mean


@pytest.mark.parametrize("auc", [0.6, 0.77, 0.8, 0.9])
def test_the_binormal_classifier_has_the_auc_it_is_given(auc):
    model = Classifier(auc, positive_rate=0.4)
    rng = np.random.default_rng(9)
    y = rng.random(100_000) < model.positive_rate
    est = delong(rng.normal(size=y.size) + model.separation * y, y.astype(int))
    assert est.auc == pytest.approx(auc, abs=4 * math.sqrt(est.variance))
