"""Quality from joined rows, pure: per (variant, model, version, shadow) the label coverage and delay and the exact
metrics of meshserve.quality; and the judge's anytime-valid comparisons of a canary against its baseline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from meshserve.quality import (
    BinaryQuality,
    Comparison,
    LabelSummary,
    Moments,
    RegressionQuality,
    binary_quality,
    compare_auc,
    compare_log_loss,
    delong,
    label_summary,
    log_losses,
    regression_quality,
)
from meshserve.quality.metrics import threshold_counts
from services.monitor.records import Rows, Task

CALIBRATION_BINS = 10
METRICS = ("auc", "log_loss")  # what a criterion may name


@dataclass(frozen=True, slots=True)
class VariantReport:
    variant: str
    model: str
    model_version: str
    shadow: bool
    task: Task
    labels: LabelSummary
    binary: BinaryQuality | None
    regression: RegressionQuality | None


@dataclass(frozen=True, slots=True)
class Criterion:
    metric: str  # "auc": limit is the largest allowed decrease; "log_loss": the largest allowed ratio
    limit: float


def _groups(rows: Rows) -> dict[tuple[str, str, str, bool], np.ndarray]:
    index: dict[tuple[str, str, str, bool], list[int]] = {}
    keys = zip(rows.variant, rows.model, rows.model_version, rows.shadow.tolist(), strict=True)
    for i, key in enumerate(keys):
        index.setdefault(key, []).append(i)
    return {key: np.array(found) for key, found in sorted(index.items())}


def _binary(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> BinaryQuality:
    """At the records' threshold; where it changed within the window (a routes reload), each row is judged at
    its own."""
    threshold = float(thresholds[-1]) if thresholds.size else 0.5
    quality = binary_quality(scores, labels, threshold, CALIBRATION_BINS)
    if thresholds.size and np.any(thresholds != threshold):
        tp, fp, fn = threshold_counts(scores, labels, thresholds)
        quality = dataclasses.replace(
            quality,
            precision=tp / (tp + fp) if tp + fp else 0.0,
            recall=tp / (tp + fn) if tp + fn else 0.0,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            predicted_positive_rate=(tp + fp) / scores.size,
        )
    return quality


def variant_reports(rows: Rows) -> list[VariantReport]:
    """One report per (variant, model, version, shadow), in that order. A group's task is its latest record's;
    its metrics use its labelled rows of that task."""
    reports = []
    for (variant, model, version, shadow), index in _groups(rows).items():
        latest = index[np.argmax(rows.time[index])]
        task = Task(int(rows.task[latest]))
        labelled = index[~np.isnan(rows.label[index]) & (rows.task[index] == task)]
        if task is Task.BINARY:  # an id shared with a regression route's record may carry another number
            labelled = labelled[np.isin(rows.label[labelled], (0.0, 1.0))]
        score, label = rows.score[labelled], rows.label[labelled]
        binary = regression = None
        if task is Task.BINARY:
            binary = _binary(score, label, rows.threshold[labelled])
        else:
            regression = regression_quality(score, label)
        summary = label_summary(rows.time[index], rows.label_time[index])
        reports.append(VariantReport(variant, model, version, shadow, task, summary, binary, regression))
    return reports


def _side(rows: Rows, variant: str, ids: set[str] | None) -> tuple[np.ndarray, np.ndarray]:
    mask = np.array([v == variant for v in rows.variant], dtype=bool) & np.isin(rows.label, (0.0, 1.0))
    if ids is not None:
        mask &= np.array([pid in ids for pid in rows.prediction_id], dtype=bool)
    return rows.score[mask], rows.label[mask]


def compare(
    rows: Rows,
    baseline: str,
    canary: str,
    criteria: list[Criterion],
    *,
    alpha: float,
    paired: bool,
    min_labels: int,
) -> list[tuple[Criterion, Comparison]]:
    """Each criterion judged on the labelled rows of both variants (binary); paired: only on the prediction ids
    both answered (a shadow and its primary)."""
    ids = None
    if paired:
        by_variant: dict[str, set[str]] = {baseline: set(), canary: set()}
        for pid, variant in zip(rows.prediction_id, rows.variant, strict=True):
            if variant in by_variant:
                by_variant[variant].add(pid)
        ids = by_variant[baseline] & by_variant[canary]
    c_score, c_label = _side(rows, canary, ids)
    b_score, b_label = _side(rows, baseline, ids)
    out = []
    for criterion in criteria:
        if criterion.metric == "auc":
            result = compare_auc(
                delong(c_score, c_label),
                delong(b_score, b_label),
                margin=criterion.limit,
                alpha=alpha,
                min_samples=min_labels,
            )
        else:
            result = compare_log_loss(
                Moments.of(log_losses(c_score, c_label)),
                Moments.of(log_losses(b_score, b_label)),
                ratio=criterion.limit,
                alpha=alpha,
                min_samples=min_labels,
            )
        out.append((criterion, result))
    return out
