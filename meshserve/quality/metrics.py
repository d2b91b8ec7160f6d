"""Exact quality metrics on joined rows (one score and one label per prediction), equal to scikit-learn's on the
same rows (the unit tests hold them to 1e-9).

Conventions, taken from scikit-learn 1.9 so that the numbers a user checks there agree:
- AUC counts a tied positive/negative pair as half (as `roc_auc_score`'s trapezoids do). With one class only it
  is undefined: we return None where scikit-learn returns NaN with a warning.
- Log loss clips probabilities to [eps, 1 - eps], eps the machine epsilon of float64 (`log_loss` clips at the eps
  of the input's dtype; we read scores as float64, so the two agree for float64 scores).
- Precision, recall and F1 at a threshold count `score >= threshold` as a positive prediction; a ratio whose
  denominator is zero (no predicted positives, no actual positives) is 0.0, scikit-learn's default
  (`zero_division="warn"` gives 0.0, with a warning).
- Calibration uses equal-width bins on [0, 1] as `calibration_curve(strategy="uniform")` does: a score on an
  inner edge falls in the bin below it.
Every metric of an empty input is None.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_score: float | None  # None for an empty bin
    positive_fraction: float | None


@dataclass(frozen=True, slots=True)
class Calibration:
    expected_calibration_error: float | None  # sum over bins of count/n * |positive fraction - mean score|
    bins: tuple[ReliabilityBin, ...]


@dataclass(frozen=True, slots=True)
class BinaryQuality:
    """Quality of a binary classifier's probability scores against 0/1 labels."""

    count: int
    positives: int
    threshold: float
    auc: float | None
    log_loss: float | None
    brier: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    predicted_positive_rate: float | None
    actual_positive_rate: float | None
    calibration: Calibration


@dataclass(frozen=True, slots=True)
class RegressionQuality:
    count: int
    mae: float | None
    rmse: float | None


@dataclass(frozen=True, slots=True)
class LabelSummary:
    """How many predictions have their label, and how late labels came (seconds from prediction to label)."""

    predictions: int
    labelled: int
    coverage: float | None  # labelled / predictions
    delay_p50_s: float | None
    delay_p90_s: float | None
    delay_p99_s: float | None
    delay_max_s: float | None


def binary_rows(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels as float64 vectors, checked: same length, finite scores, labels 0 or 1."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels of a binary task must be 0 or 1")
    return s, y


def _probabilities(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = binary_rows(scores, labels)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probability scores must lie in [0, 1]")
    return p, y


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(scores, labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney U / (positives * negatives)); None with one class or no rows.
    Scores may be any real numbers (only their order counts)."""
    s, y = binary_rows(scores, labels)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None
    rank_sum = float(average_ranks(s)[y == 1.0].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_losses(probabilities, labels) -> np.ndarray:
    """Each row's log loss (clipped as scikit-learn does): what `sequential.Moments.of` sums for a comparison."""
    p, y = _probabilities(probabilities, labels)
    p = np.clip(p, EPS, 1.0 - EPS)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def log_loss(probabilities, labels) -> float | None:
    losses = log_losses(probabilities, labels)
    return float(losses.mean()) if losses.size else None


def brier(probabilities, labels) -> float | None:
    p, y = _probabilities(probabilities, labels)
    return float(np.mean((p - y) ** 2)) if p.size else None


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0  # scikit-learn's default for a zero division


def threshold_counts(scores, labels, threshold: float) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) with `score >= threshold` predicted positive."""
    s, y = binary_rows(scores, labels)
    predicted = s >= threshold
    actual = y == 1.0
    return int(np.sum(predicted & actual)), int(np.sum(predicted & ~actual)), int(np.sum(~predicted & actual))


def calibration(probabilities, labels, bins: int = 10) -> Calibration:
    """Reliability bins (equal width on [0, 1]) and the expected calibration error they give."""
    if bins < 1:
        raise ValueError("calibration needs at least one bin")
    p, y = _probabilities(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], p)  # left: a score on an inner edge belongs to the bin below
    counts = np.bincount(which, minlength=bins)
    score_sums = np.bincount(which, weights=p, minlength=bins)
    positive_sums = np.bincount(which, weights=y, minlength=bins)
    out, gap = [], 0.0
    for k in range(bins):
        n = int(counts[k])
        mean_score = score_sums[k] / n if n else None
        positive_fraction = positive_sums[k] / n if n else None
        if n:
            gap += n * abs(positive_sums[k] / n - score_sums[k] / n)
        out.append(ReliabilityBin(float(edges[k]), float(edges[k + 1]), n, mean_score, positive_fraction))
    ece = gap / p.size if p.size else None
    return Calibration(None if ece is None else float(ece), tuple(out))


def binary_quality(probabilities, labels, threshold: float = 0.5, bins: int = 10) -> BinaryQuality:
    """Every binary-classification metric at once, on probability scores in [0, 1]."""
    p, y = _probabilities(probabilities, labels)
    n = int(p.size)
    cal = calibration(p, y, bins)
    if not n:
        return BinaryQuality(0, 0, threshold, None, None, None, None, None, None, None, None, cal)
    tp, fp, fn = threshold_counts(p, y, threshold)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return BinaryQuality(
        count=n,
        positives=int(y.sum()),
        threshold=threshold,
        auc=auc(p, y),
        log_loss=log_loss(p, y),
        brier=brier(p, y),
        precision=precision,
        recall=recall,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        predicted_positive_rate=(tp + fp) / n,
        actual_positive_rate=float(y.mean()),
        calibration=cal,
    )


def regression_quality(predictions, targets) -> RegressionQuality:
    yhat = np.asarray(predictions, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    if yhat.shape != y.shape:
        raise ValueError(f"{yhat.size} predictions but {y.size} targets")
    if not (np.isfinite(yhat).all() and np.isfinite(y).all()):
        raise ValueError("predictions and targets must be finite")
    if not y.size:
        return RegressionQuality(0, None, None)
    error = yhat - y
    return RegressionQuality(int(y.size), float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2))))


def label_summary(prediction_times, label_times) -> LabelSummary:
    """Coverage and delay from the time of each prediction and of its label (NaN: no label yet). Quantiles are
    numpy's default (linear interpolation). A negative delay (a label stamped before its prediction, from clock
    skew) is kept as it is: it says something about the clocks."""
    predicted = np.asarray(prediction_times, dtype=np.float64).ravel()
    labelled_at = np.asarray(label_times, dtype=np.float64).ravel()
    if predicted.shape != labelled_at.shape:
        raise ValueError(f"{predicted.size} prediction times but {labelled_at.size} label times")
    has_label = ~np.isnan(labelled_at)
    delays = labelled_at[has_label] - predicted[has_label]
    n, labelled = int(predicted.size), int(has_label.sum())
    if not labelled:
        return LabelSummary(n, 0, 0.0 if n else None, None, None, None, None)
    p50, p90, p99 = (float(q) for q in np.quantile(delays, (0.5, 0.9, 0.99)))
    return LabelSummary(n, labelled, labelled / n, p50, p90, p99, float(delays.max()))
