"""AUC with its variance, as a sequential comparison needs it: exactly from rows (DeLong), or from a score
histogram that any number of gateways and windows can add up in bounded memory.

DeLong et al. (1988): the AUC is the mean of each positive's placement among the negatives (the share of negatives
scored below it, ties counting half), and equally of each negative's placement among the positives. Its variance is
estimated by S10/n+ + S01/n-, the sample variances of the two sets of placements over their counts: the variance of
the U-statistic's Hajek projection, which is what makes the AUC behave like a mean as rows accumulate.

A histogram replaces each score by its bin, so pairs in one bin count as ties. That moves the AUC from the exact
value by at most half the share of positive/negative pairs that share a bin (each such pair counts 1/2 instead of 0
or 1): `tie_bound`, returned with the estimate. Scores that fall in different bins are ordered exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshserve.quality.metrics import binary_rows


@dataclass(frozen=True, slots=True)
class AucEstimate:
    auc: float  # NaN without both classes
    variance: float  # DeLong's estimate of Var(auc); NaN with fewer than 2 rows of either class
    positives: int
    negatives: int
    tie_bound: float = 0.0  # the most that binning can have moved `auc` from the exact value (0 for rows)

    @property
    def count(self) -> int:
        return self.positives + self.negatives


def _placements(of: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each value in `of`: the share of `among` below it, ties counting half."""
    ordered = np.sort(among)
    below = np.searchsorted(ordered, of, side="left")
    not_above = np.searchsorted(ordered, of, side="right")
    return (below + not_above) / (2.0 * ordered.size)


def delong(scores, labels) -> AucEstimate:
    """The exact AUC (equal to scikit-learn's, ties counting half) and DeLong's variance, from rows."""
    s, y = binary_rows(scores, labels)
    pos, neg = s[y == 1.0], s[y == 0.0]
    if not pos.size or not neg.size:
        return AucEstimate(float("nan"), float("nan"), int(pos.size), int(neg.size))
    v10 = _placements(pos, neg)  # each positive among the negatives
    v01 = 1.0 - _placements(neg, pos)  # each negative: the share of positives above it, ties half
    auc = float(v10.mean())
    if pos.size < 2 or neg.size < 2:
        return AucEstimate(auc, float("nan"), int(pos.size), int(neg.size))
    variance = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    return AucEstimate(auc, float(variance), int(pos.size), int(neg.size))


def histogram_auc(positives, negatives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(auc, DeLong variance, tie bound) from counts per score bin, bins in increasing score order on the last
    axis; vectorised over any leading axes (e.g. one row per look of a judge). NaN where undefined."""
    p = np.asarray(positives, dtype=np.float64)
    n = np.asarray(negatives, dtype=np.float64)
    n_pos, n_neg = p.sum(axis=-1), n.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # a positive in bin k sits above every negative in lower bins and ties with those in bin k
        v10 = (np.cumsum(n, axis=-1) - 0.5 * n) / n_neg[..., None]
        v01 = (n_pos[..., None] - np.cumsum(p, axis=-1) + 0.5 * p) / n_pos[..., None]
        auc = np.sum(p * v10, axis=-1) / n_pos
        s10 = np.sum(p * (v10 - auc[..., None]) ** 2, axis=-1) / (n_pos - 1.0)
        s01 = np.sum(n * (v01 - auc[..., None]) ** 2, axis=-1) / (n_neg - 1.0)
        variance = np.where((n_pos >= 2) & (n_neg >= 2), s10 / n_pos + s01 / n_neg, np.nan)
        tie_bound = 0.5 * np.sum(p * n, axis=-1) / (n_pos * n_neg)
    return auc, variance, tie_bound


@dataclass(frozen=True, slots=True, eq=False)  # arrays: == would be ambiguous
class ScoreHistogram:
    """Labelled scores counted per bin and class. `edges` are the inner bin edges, increasing: bin 0 is
    (-inf, edges[0]], bin k is (edges[k-1], edges[k]], the last is (edges[-1], inf)."""

    edges: np.ndarray
    positives: np.ndarray  # counts per bin
    negatives: np.ndarray

    def __post_init__(self) -> None:
        edges = np.asarray(self.edges, dtype=np.float64)
        if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
            raise ValueError("histogram edges must be increasing")
        object.__setattr__(self, "edges", edges)
        for name in ("positives", "negatives"):
            counts = np.asarray(getattr(self, name), np.int64)
            if counts.shape != (edges.size + 1,):
                raise ValueError(f"{name} must have one count per bin ({edges.size + 1})")
            object.__setattr__(self, name, counts)

    @classmethod
    def empty(cls, edges) -> ScoreHistogram:
        bins = np.asarray(edges).size + 1
        return cls(edges, np.zeros(bins, np.int64), np.zeros(bins, np.int64))

    def add(self, scores, labels) -> ScoreHistogram:
        """A new histogram with these rows counted too."""
        s, y = binary_rows(scores, labels)
        which = np.searchsorted(self.edges, s, side="left")
        bins = self.edges.size + 1
        return ScoreHistogram(
            self.edges,
            self.positives + np.bincount(which[y == 1.0], minlength=bins),
            self.negatives + np.bincount(which[y == 0.0], minlength=bins),
        )

    def __add__(self, other: ScoreHistogram) -> ScoreHistogram:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("only histograms with the same edges add up")
        return ScoreHistogram(self.edges, self.positives + other.positives, self.negatives + other.negatives)

    def estimate(self) -> AucEstimate:
        auc, variance, tie_bound = histogram_auc(self.positives, self.negatives)
        return AucEstimate(
            float(auc),
            float(variance),
            int(self.positives.sum()),
            int(self.negatives.sum()),
            float(tie_bound),
        )
