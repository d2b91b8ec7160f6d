"""Exact quality metrics equal scikit-learn's on the same rows (to 1e-9), ties, one class and empty input
included."""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    brier_score_loss,
    f1_score,
    log_loss,
    mean_absolute_error,
    precision_score,
    recall_score,
    roc_auc_score,
    root_mean_squared_error,
)

from meshserve.quality import metrics
from meshserve.quality.metrics import binary_quality, label_summary, regression_quality

TOL = 1e-9


def _rows(seed: int, n: int, ties: bool = False, prevalence: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that carry signal about the labels; with `ties`, rounded to 2 decimals (many tied pairs,
    scores exactly on the bin edges and on the threshold)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.0)))
    if ties:
        p = np.round(p, 2)
    return p, y


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_equal_scikit_learns(seed, ties):
    p, y = _rows(seed, 3000 + 500 * seed, ties)
    threshold = 0.4 if ties else 0.37
    q = binary_quality(p, y, threshold=threshold, bins=10)
    predicted = (p >= threshold).astype(int)
    assert q.count == p.size and q.positives == y.sum()
    assert q.auc == pytest.approx(roc_auc_score(y, p), abs=TOL)
    assert q.log_loss == pytest.approx(log_loss(y, p), abs=TOL)
    assert q.brier == pytest.approx(brier_score_loss(y, p), abs=TOL)
    assert q.precision == pytest.approx(precision_score(y, predicted), abs=TOL)
    assert q.recall == pytest.approx(recall_score(y, predicted), abs=TOL)
    assert q.f1 == pytest.approx(f1_score(y, predicted), abs=TOL)
    assert q.predicted_positive_rate == pytest.approx(predicted.mean(), abs=TOL)
    assert q.actual_positive_rate == pytest.approx(y.mean(), abs=TOL)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bins", [5, 10, 17])
def test_reliability_bins_equal_calibration_curves(seed, bins):
    p, y = _rows(seed, 2000, ties=seed % 2 == 1)  # rounded scores land on the edges of 5 and 10 bins
    cal = binary_quality(p, y, bins=bins).calibration
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    filled = [b for b in cal.bins if b.count]
    assert len(cal.bins) == bins and sum(b.count for b in cal.bins) == p.size
    np.testing.assert_allclose([b.positive_fraction for b in filled], prob_true, rtol=0, atol=TOL)
    np.testing.assert_allclose([b.mean_score for b in filled], prob_pred, rtol=0, atol=TOL)
    assert all(b.mean_score is None and b.positive_fraction is None for b in cal.bins if not b.count)
    counts = np.array([b.count for b in filled])
    expected_ece = np.sum(counts / p.size * np.abs(prob_true - prob_pred))
    assert cal.expected_calibration_error == pytest.approx(expected_ece, abs=TOL)


def test_a_perfectly_calibrated_bin_set_has_zero_ece_and_the_edges_are_equal_width():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 0, 1, 1])
    cal = metrics.calibration(p, y, bins=4)
    assert [(b.lower, b.upper) for b in cal.bins] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    assert [b.count for b in cal.bins] == [2, 0, 0, 2]
    assert cal.expected_calibration_error == pytest.approx(
        0.05
    )  # |0 - 0.05| and |1 - 0.95|, half the rows each


def test_auc_counts_tied_pairs_as_half_and_takes_any_real_scores():
    assert metrics.auc([1.0, 1.0], [0, 1]) == 0.5
    assert metrics.auc([-3.0, 2.0, 2.0, 7.0], [0, 0, 1, 1]) == pytest.approx(
        roc_auc_score([0, 0, 1, 1], [-3, 2, 2, 7])
    )
    s = np.random.default_rng(1).integers(0, 5, 400).astype(float) * 10.0  # five values: mostly ties
    y = np.random.default_rng(2).integers(0, 2, 400)
    assert metrics.auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=TOL)


def test_with_one_class_auc_is_none_where_scikit_learn_says_nan_and_the_rest_still_equal_it():
    p, _ = _rows(3, 500)
    for label in (0, 1):
        y = np.full(p.size, label)
        q = binary_quality(p, y, threshold=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            assert np.isnan(roc_auc_score(y, p))
            predicted = (p >= 0.5).astype(int)
            assert q.precision == pytest.approx(precision_score(y, predicted), abs=TOL)
            assert q.recall == pytest.approx(recall_score(y, predicted), abs=TOL)
            assert q.f1 == pytest.approx(f1_score(y, predicted), abs=TOL)
        assert q.auc is None
        assert q.log_loss == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=TOL)
        assert q.brier == pytest.approx(brier_score_loss(y, p, labels=[0, 1]), abs=TOL)


def test_zero_divisions_are_zero_as_scikit_learns_default():
    y = np.array([0, 0, 1, 1])
    nothing_predicted = np.array([0.1, 0.2, 0.3, 0.4])
    q = binary_quality(nothing_predicted, y, threshold=0.9)
    assert (q.precision, q.recall, q.f1, q.predicted_positive_rate) == (0.0, 0.0, 0.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert precision_score(y, (nothing_predicted >= 0.9).astype(int)) == 0.0
    no_positives = binary_quality([0.1, 0.2], [0, 0], threshold=0.9)
    assert (no_positives.precision, no_positives.recall, no_positives.f1) == (0.0, 0.0, 0.0)


def test_log_loss_clips_certain_mistakes_like_scikit_learn():
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.5])
    y = np.array([1, 0, 1, 0, 1])
    assert metrics.log_loss(p, y) == pytest.approx(log_loss(y, p), abs=TOL)
    assert metrics.log_loss(p, y) == pytest.approx(2 * -np.log(metrics.EPS) / 5 + np.log(2) / 5, rel=1e-12)


def test_empty_input_gives_none_everywhere():
    q = binary_quality([], [])
    assert q.count == 0 and q.positives == 0
    assert (q.auc, q.log_loss, q.brier, q.precision, q.recall, q.f1) == (None,) * 6
    assert q.predicted_positive_rate is None and q.actual_positive_rate is None
    assert q.calibration.expected_calibration_error is None and all(b.count == 0 for b in q.calibration.bins)
    assert regression_quality([], []) == metrics.RegressionQuality(0, None, None)
    assert label_summary([], []) == metrics.LabelSummary(0, 0, None, None, None, None, None)


@pytest.mark.parametrize(
    ("scores", "labels", "why"),
    [
        ([0.1, 0.2], [0, 2], "0 or 1"),
        ([0.1, np.nan], [0, 1], "finite"),
        ([0.1, 1.2], [0, 1], "[0, 1]"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
    ],
)
def test_bad_rows_are_refused_with_the_reason(scores, labels, why):
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        binary_quality(scores, labels)
    assert binary_quality([0.2, 0.8], [0, 1]).auc == 1.0  # and a good call still works


@pytest.mark.parametrize("seed", range(4))
def test_regression_metrics_equal_scikit_learns(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, 1000)
    yhat = y + rng.standard_t(3, 1000)
    q = regression_quality(yhat, y)
    assert q.count == 1000
    assert q.mae == pytest.approx(mean_absolute_error(y, yhat), abs=TOL)
    assert q.rmse == pytest.approx(root_mean_squared_error(y, yhat), abs=TOL)


def test_label_summary_counts_coverage_and_delay_quantiles():
    rng = np.random.default_rng(5)
    predicted = np.sort(rng.uniform(0, 86_400, 10_000))
    delays = rng.exponential(3600, predicted.size)
    labelled = predicted + delays
    labelled[rng.random(predicted.size) < 0.25] = np.nan  # a quarter not labelled yet
    s = label_summary(predicted, labelled)
    has = ~np.isnan(labelled)
    assert (s.predictions, s.labelled) == (10_000, int(has.sum()))
    assert s.coverage == pytest.approx(has.mean())
    assert (s.delay_p50_s, s.delay_p90_s, s.delay_p99_s) == pytest.approx(
        tuple(np.quantile(delays[has], (0.5, 0.9, 0.99))), abs=1e-6
    )
    assert s.delay_max_s == pytest.approx(delays[has].max())
    assert label_summary([1.0, 2.0], [np.nan, np.nan]).coverage == 0.0


def test_the_package_imports_only_numpy_and_the_standard_library():
    root = Path(metrics.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"numpy", "meshserve"}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
                if name.startswith("meshserve"):
                    assert name.startswith("meshserve.quality"), f"{path.name} imports {name}"
