"""Anytime-valid comparisons: the boundary, the verdicts, and (by simulation, looking after every few rows) that
the confidence sequences keep their error rate where a fixed-sample interval checked as often does not."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss

from meshserve.quality.auc import AucEstimate, histogram_auc
from meshserve.quality.metrics import log_losses
from meshserve.quality.sequential import (
    BREACH,
    PASS,
    UNDECIDED,
    WAITING,
    Comparison,
    Moments,
    auc_difference,
    compare_auc,
    compare_error_rates,
    compare_log_loss,
    decide,
    e_value,
    error_rate_difference,
    half_width,
    log_ratio,
    mixture_variance,
)

ALPHA = 0.05
STREAMS = 400


def test_the_boundary_is_tightest_where_its_half_width_is_the_resolution():
    tau2 = mixture_variance(0.01, ALPHA)
    two_log = 2 * math.log(1 / ALPHA)
    v_star = tau2 / (two_log + math.log(two_log + 1))
    assert half_width(v_star, ALPHA, tau2) == pytest.approx(0.01, rel=1e-12)
    for other in (0.5 * tau2, 0.8 * tau2, 1.25 * tau2, 2 * tau2):
        assert half_width(v_star, ALPHA, other) > half_width(v_star, ALPHA, tau2)
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    for v in (1e-8, 1e-6, 1e-4):  # always wider than a fixed-sample interval: the price of looking at will
        assert half_width(v, ALPHA, tau2) > z * math.sqrt(v)


def test_the_statistic_reaches_one_over_alpha_exactly_on_the_bounds():
    tau2 = mixture_variance(0.02, ALPHA)
    for v in (1e-6, 4e-5, 1e-3):
        w = float(half_width(v, ALPHA, tau2))
        assert e_value(0.3 + w, v, 0.3, tau2) == pytest.approx(1 / ALPHA, rel=1e-9)
        assert e_value(0.3 - w, v, 0.3, tau2) == pytest.approx(1 / ALPHA, rel=1e-9)
        assert e_value(0.3 + w / 2, v, 0.3, tau2) < 1 / ALPHA


def test_decide_gives_each_verdict_vectorised():
    est = np.array([0.05, 0.05, 0.0, 0.009, 0.5])
    var = np.array([1e-6, 1e-6, 1e-6, 1e-6, np.nan])
    ready = np.array([False, True, True, True, True])
    codes, lower, upper, stat = decide(est, var, ready, limit=0.01, higher_is_worse=True, alpha=ALPHA,
                                       tau2=mixture_variance(0.01, ALPHA))  # fmt: skip
    assert codes.tolist() == [WAITING, BREACH, PASS, UNDECIDED, WAITING]
    assert np.isnan(lower[0]) and np.isnan(stat[0]) and lower[1] > 0.01 and upper[2] <= 0.01
    assert stat[1] >= 1 / ALPHA and stat[2] >= 1 / ALPHA and stat[3] < 1 / ALPHA


def test_error_rate_verdicts():
    worse = compare_error_rates(10_000, 300, 190_000, 1_900, margin=0.01)
    assert worse.verdict == "breach" and worse.estimate == pytest.approx(0.02) and worse.lower > 0.01
    assert worse.canary == pytest.approx(0.03) and worse.baseline == pytest.approx(0.01)
    equal = compare_error_rates(10_000, 100, 190_000, 1_900, margin=0.01)
    assert equal.verdict == "pass" and equal.upper <= 0.01
    assert compare_error_rates(1_000, 10, 19_000, 190, margin=0.01).verdict == "undecided"
    waiting = compare_error_rates(50, 50, 19_000, 190, margin=0.01, min_samples=100)
    assert waiting.verdict == "waiting" and "100 samples" in waiting.reason
    # a canary with no errors yet is not certain: the adjusted variance keeps its bound open
    lucky = compare_error_rates(100, 0, 100_000, 1_000, margin=0.0, min_samples=100)
    assert lucky.verdict == "undecided" and lucky.upper > 0


def test_auc_and_log_loss_verdicts_and_what_they_say():
    worse = compare_auc(
        AucEstimate(0.77, 1e-5, 3_000, 7_000), AucEstimate(0.80, 1e-6, 30_000, 70_000), margin=0.01
    )
    assert worse.verdict == "breach" and worse.upper < -0.01 and worse.limit == -0.01
    assert "canary AUC 0.77 vs baseline 0.8" in worse.reason and "outside the limit -0.01" in worse.reason
    equal = compare_auc(
        AucEstimate(0.80, 1e-6, 30_000, 70_000), AucEstimate(0.80, 1e-6, 30_000, 70_000), margin=0.01
    )
    assert equal.verdict == "pass"
    one_class = compare_auc(AucEstimate(float("nan"), float("nan"), 500, 0), AucEstimate(0.8, 1e-6, 9e4, 1e4),
                            margin=0.01)  # fmt: skip
    assert one_class.verdict == "waiting"
    canary = Moments(5_000, 0.5 * 5_000, (0.25 + 0.09) * 5_000)
    baseline = Moments(50_000, 0.45 * 50_000, (0.45**2 + 0.09) * 50_000)
    loss = compare_log_loss(canary, baseline, ratio=1.05)
    assert loss.verdict == "breach" and loss.estimate == pytest.approx(0.5 / 0.45) and loss.lower > 1.05
    assert loss.limit == pytest.approx(1.05) and "x1.111" in loss.reason
    assert compare_log_loss(baseline, baseline, ratio=1.05).verdict == "pass"
    assert Comparison.from_dict(loss.to_dict()) == loss
    assert "e-value" in loss.describe() and "5000 canary" in loss.describe()


def test_moments_of_row_log_losses_give_scikit_learns_log_loss():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 3000)
    p = np.clip(rng.beta(2, 2, 3000) + 0.2 * y - 0.1, 0, 1)
    assert Moments.of(log_losses(p, y)).mean == pytest.approx(sk_log_loss(y, p), abs=1e-9)


def test_moments_add_up_to_the_mean_and_sample_variance():
    x = np.random.default_rng(0).exponential(0.5, 1001)
    m = Moments.of(x[:400]) + Moments.of(x[400:])
    assert (
        m.count == 1001 and m.mean == pytest.approx(x.mean()) and m.variance == pytest.approx(x.var(ddof=1))
    )
    assert math.isnan(Moments().mean) and math.isnan(Moments.of([1.0]).variance)


# Anytime validity, measured: STREAMS canaries equal to their baselines, looked at after every few rows with a 5 %
# canary share; the share of streams whose CS ever excludes the truth must stay near alpha (or below), while a
# fixed-sample 95 % interval looked at as often excludes it far more often.


def _ever_excluded(estimate, variance, ready, truth, width) -> float:
    excluded = ready & (np.abs(estimate - truth) > width)
    return float(np.mean(excluded.any(axis=1)))


@pytest.mark.parametrize(
    ("canary_rate", "baseline_rate", "min_samples"), [(0.02, 0.02, 200), (0.03, 0.01, 1000)]
)
def test_the_error_rate_cs_keeps_its_rate_under_continuous_looks(canary_rate, baseline_rate, min_samples):
    rng = np.random.default_rng(1)
    looks, per_look_c, per_look_b = 2_000, 5, 95
    n_c = np.cumsum(np.full((STREAMS, looks), per_look_c), axis=1)
    n_b = np.cumsum(np.full((STREAMS, looks), per_look_b), axis=1)
    e_c = np.cumsum(rng.binomial(per_look_c, canary_rate, (STREAMS, looks)), axis=1)
    e_b = np.cumsum(rng.binomial(per_look_b, baseline_rate, (STREAMS, looks)), axis=1)
    est, var = error_rate_difference(n_c, e_c, n_b, e_b)
    ready = n_c >= min_samples
    truth = canary_rate - baseline_rate
    tau2 = mixture_variance(0.01, ALPHA)
    cs = _ever_excluded(est, var, ready, truth, half_width(var, ALPHA, tau2))
    fixed = _ever_excluded(est, var, ready, truth, 1.96 * np.sqrt(var))
    assert cs <= ALPHA + 0.02, cs
    assert fixed > 2 * ALPHA, fixed


def test_the_auc_cs_keeps_its_rate_under_continuous_looks():
    rng = np.random.default_rng(2)
    looks, bins = 300, 24
    edges = np.linspace(-2.0, 3.0, bins - 1)
    cdf = np.vectorize(NormalDist().cdf)
    neg_p = np.diff(np.r_[0.0, cdf(edges), 1.0])
    pos_p = np.diff(np.r_[0.0, cdf(edges - 1.2), 1.0])

    def side(rows_per_look: float):  # Poisson rows per look, split by class (prevalence 0.3) and bin
        pos = np.cumsum(rng.poisson(rows_per_look * 0.3 * pos_p, (STREAMS, looks, bins)), axis=1)
        neg = np.cumsum(rng.poisson(rows_per_look * 0.7 * neg_p, (STREAMS, looks, bins)), axis=1)
        auc, var, _ = histogram_auc(pos, neg)
        return auc, var, (pos + neg).sum(axis=-1)

    a_c, v_c, n_c = side(10)
    a_b, v_b, _ = side(190)
    est, var = auc_difference(a_c, v_c, a_b, v_b)
    ready = (n_c >= 200) & np.isfinite(var)
    tau2 = mixture_variance(0.02, ALPHA)
    cs = _ever_excluded(est, var, ready, 0.0, half_width(var, ALPHA, tau2))
    fixed = _ever_excluded(est, var, ready, 0.0, 1.96 * np.sqrt(var))
    assert cs <= ALPHA + 0.02, cs
    assert fixed > 2 * ALPHA, fixed


def test_the_log_loss_ratio_cs_keeps_its_rate_under_continuous_looks():
    rng = np.random.default_rng(3)
    looks, per_look_c, per_look_b, d, prevalence = 300, 4, 36, 1.2, 0.3

    def losses(rows: int):  # calibrated binormal probabilities, so both sides share one true mean log loss
        y = rng.random((STREAMS, looks, rows)) < prevalence
        x = rng.normal(size=y.shape) + d * y
        logit = math.log(prevalence / (1 - prevalence)) + d * x - d * d / 2
        loss = np.logaddexp(0.0, np.where(y, -logit, logit))  # -log p(y | x)
        n = np.cumsum(np.full((STREAMS, looks), rows), axis=1)
        total, squares = np.cumsum(loss.sum(-1), axis=1), np.cumsum((loss**2).sum(-1), axis=1)
        return n, total / n, (squares - total**2 / n) / (n - 1)

    n_c, m_c, v_c = losses(per_look_c)
    n_b, m_b, v_b = losses(per_look_b)
    est, var = log_ratio(n_c, m_c, v_c, n_b, m_b, v_b)
    ready = n_c >= 200
    tau2 = mixture_variance(math.log(1.05), ALPHA)
    cs = _ever_excluded(est, var, ready, 0.0, half_width(var, ALPHA, tau2))
    fixed = _ever_excluded(est, var, ready, 0.0, 1.96 * np.sqrt(var))
    assert cs <= ALPHA + 0.02, cs
    assert fixed > 2 * ALPHA, fixed
