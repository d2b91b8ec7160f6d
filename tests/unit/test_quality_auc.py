"""AUC estimates with their variance: DeLong's from rows and from a score histogram, and the histogram's bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from meshserve.quality.auc import ScoreHistogram, delong, histogram_auc


def _binormal(rng: np.random.Generator, n: int, d: float = 1.2, prevalence: float = 0.4):
    y = (rng.random(n) < prevalence).astype(int)
    return rng.normal(size=n) + d * y, y


def _delong_by_pairs(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The textbook definition, pair by pair (O(n^2)): an independent check."""
    pos, neg = s[y == 1], s[y == 0]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    auc = kernel.mean()
    s10 = np.sum((v10 - auc) ** 2) / (pos.size - 1)
    s01 = np.sum((v01 - auc) ** 2) / (neg.size - 1)
    return auc, s10 / pos.size + s01 / neg.size


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rounded", [False, True])
def test_delong_equals_the_pairwise_definition_and_scikit_learns_auc(seed, rounded):
    s, y = _binormal(np.random.default_rng(seed), 700)
    if rounded:
        s = np.round(s, 1)  # many ties
    est = delong(s, y)
    auc, variance = _delong_by_pairs(s, y)
    assert est.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert est.auc == pytest.approx(auc, abs=1e-12)
    assert est.variance == pytest.approx(variance, rel=1e-9)
    assert (est.positives, est.negatives, est.tie_bound) == (int(y.sum()), int((1 - y).sum()), 0.0)


def test_delongs_variance_matches_the_spread_of_the_auc_over_samples():
    rng = np.random.default_rng(11)
    aucs, variances = [], []
    for _ in range(400):
        est = delong(*_binormal(rng, 600))
        aucs.append(est.auc)
        variances.append(est.variance)
    assert np.mean(variances) == pytest.approx(np.var(aucs, ddof=1), rel=0.15)


def test_undefined_estimates_are_nan():
    one_class = delong([0.1, 0.2, 0.3], [1, 1, 1])
    assert math.isnan(one_class.auc) and math.isnan(one_class.variance)
    one_positive = delong([0.1, 0.2, 0.3], [0, 0, 1])
    assert one_positive.auc == 1.0 and math.isnan(one_positive.variance)
    empty = ScoreHistogram.empty([0.5]).estimate()
    assert math.isnan(empty.auc) and math.isnan(empty.variance) and empty.count == 0


@pytest.mark.parametrize("seed", range(4))
def test_a_histogram_gives_delong_on_the_bins_and_stays_within_its_tie_bound(seed):
    rng = np.random.default_rng(seed)
    s, y = _binormal(rng, 5000)
    edges = np.linspace(-2.5, 3.5, 40)
    hist = ScoreHistogram.empty(edges).add(s, y)
    est = hist.estimate()
    on_bins = delong(np.searchsorted(edges, s, side="left"), y)  # each score replaced by its bin
    assert est.auc == pytest.approx(on_bins.auc, abs=1e-12)
    assert est.variance == pytest.approx(on_bins.variance, rel=1e-9)
    exact = delong(s, y)
    assert abs(est.auc - exact.auc) <= est.tie_bound
    assert 0 < est.tie_bound < 0.02
    assert est.variance == pytest.approx(exact.variance, rel=0.05)


def test_histograms_add_up_and_bin_a_score_on_an_edge_below_it():
    edges = np.array([0.25, 0.5, 0.75])
    a = ScoreHistogram.empty(edges).add([0.25, 0.3, 0.9], [1, 0, 1])
    b = ScoreHistogram.empty(edges).add([0.5, 0.1], [0, 0])
    assert a.positives.tolist() == [1, 0, 0, 1] and a.negatives.tolist() == [0, 1, 0, 0]
    total = a + b
    assert total.positives.tolist() == [1, 0, 0, 1] and total.negatives.tolist() == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="same edges"):
        a + ScoreHistogram.empty([0.5])
    with pytest.raises(ValueError, match="increasing"):
        ScoreHistogram.empty([0.5, 0.5])


def test_histogram_auc_is_vectorised_over_leading_axes():
    rng = np.random.default_rng(3)
    pos = rng.integers(0, 20, size=(6, 12))
    neg = rng.integers(0, 20, size=(6, 12))
    auc, variance, bound = histogram_auc(pos, neg)
    for i in range(6):
        one = ScoreHistogram(np.arange(11.0), pos[i], neg[i]).estimate()
        assert (auc[i], variance[i], bound[i]) == pytest.approx(
            (one.auc, one.variance, one.tie_bound), rel=1e-12
        )
