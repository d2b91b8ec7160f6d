"""Anytime-valid comparisons of a canary against its baseline, for a judge that looks every few seconds.

A fixed-sample test checked at every look raises false alarms far more often than its alpha. Here every comparison
is a confidence sequence (CS): bounds that hold at every look at once, so a judge may look as often as it likes,
stop at any look, and keep its stated error rate.

The boundary is the normal-mixture one: Robbins' mixture martingale as used by Johari et al.'s mSPRT ("Always valid
inference", 2017/2022) and by Waudby-Smith, Ramdas et al.'s asymptotic confidence sequences ("Time-uniform central
limit theory and asymptotic confidence sequences", 2021/2024). For an estimate with (estimated) variance v and a
mixture variance tau2, the two-sided (1 - alpha) CS is

    estimate +- sqrt( (v + v^2 / tau2) * (log(1 + tau2 / v) + 2 log(1 / alpha)) ),

and its statistic, the mixture likelihood ratio (an e-value) against `estimate == limit`, is
sqrt(v / (v + tau2)) * exp(tau2 (estimate - limit)^2 / (2 v (v + tau2))): the limit lies outside the CS exactly when
it reaches 1/alpha. tau2 only sets where the boundary is tightest; we tune it (`mixture_variance`) so that the CS
is tightest where its half-width equals the plan's margin, the difference the judge must resolve.

Estimators, each an asymptotically normal estimate whose variance we estimate from the same data:
- error rates (Bernoulli): the difference of the two rates; its variance q(1-q)(1/n_c + 1/n_b), q the larger
  of the two sides' rates, each taken as (errors + 1) / (requests + 2) (Agresti and Caffo's adjustment). A side
  that has seen no or few errors by chance thus neither looks certain nor makes the bounds too narrow on its side
  (measured on equal 2 % rates at a 5 % share: with each side's own rate the bounds excluded the truth in 8 % of
  streams at alpha 5 %; with the larger one, in about 1 %).
- AUC: the difference of the two AUCs with DeLong's variance per side (`auc.py`). DeLong's is the variance of the
  AUC's Hajek projection, a mean of per-row placement values, so the AUC accumulates like a mean; a per-row proxy
  (e.g. a score's rank against a fixed reference) would be cheaper but estimate a different quantity. The AUC may
  come from rows (exact) or a score histogram (within its stated `tie_bound`).
- log loss: the log of the ratio of the two mean per-row log losses; each mean's variance is the sample variance
  over the count, and the delta method gives the log ratio's (v_c / (n_c m_c^2) + v_b / (n_b m_b^2)).

What it guarantees: with both sides' rows independent and identically distributed over the window (a stable model
and traffic mix, labels arriving in an order unrelated to them), the probability that the CS ever excludes the true
difference, at any look of any length, tends to at most alpha as the counts grow. So a breach (the CS lies wholly
on the worse side of the limit) is wrongly declared with probability at most alpha, and so is a pass, together.
It is asymptotic: the CLT approximation, the plug-in variance and (for the log-loss ratio) the delta method; hence
`min_samples` before any verdict, and the simulation tests that measure the rates a judge gets. A judge that runs
several comparisons (criteria, steps of a plan, each with its own window) should give each alpha / their number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from meshserve.quality.auc import AucEstimate

VERDICTS = ("waiting", "breach", "pass", "undecided")
WAITING, BREACH, PASS, UNDECIDED = range(4)
VARIANCE_FLOOR = 1e-12  # keeps a degenerate variance (every row alike) from dividing by zero


def mixture_variance(resolution: float, alpha: float) -> float:
    """The mixture variance tau2 that makes a (1 - alpha) CS tightest where its half-width is `resolution`.
    (Tightest at v* = tau2 / c, c = 2 log(1/alpha) + log(2 log(1/alpha) + 1), Waudby-Smith et al.'s choice.)"""
    if resolution <= 0 or not 0 < alpha < 1:
        raise ValueError("the resolution must be positive and alpha in (0, 1)")
    two_log = 2.0 * math.log(1.0 / alpha)
    c = two_log + math.log(two_log + 1.0)
    return c * resolution**2 / ((1.0 + 1.0 / c) * (two_log + math.log1p(c)))


def half_width(variance, alpha: float, tau2: float) -> np.ndarray:
    """Half the width of the (1 - alpha) normal-mixture CS for an estimate with this variance."""
    v = np.maximum(np.asarray(variance, dtype=np.float64), VARIANCE_FLOOR)
    return np.sqrt((v + v * v / tau2) * (np.log1p(tau2 / v) + 2.0 * math.log(1.0 / alpha)))


def e_value(estimate, variance, limit, tau2: float) -> np.ndarray:
    """The mixture likelihood ratio against `estimate == limit` (inf where it overflows)."""
    v = np.maximum(np.asarray(variance, dtype=np.float64), VARIANCE_FLOOR)
    gap = np.asarray(estimate, dtype=np.float64) - limit
    log_e = 0.5 * np.log(v / (v + tau2)) + tau2 * gap**2 / (2.0 * v * (v + tau2))
    with np.errstate(over="ignore"):
        return np.exp(log_e)


def decide(estimate, variance, ready, *, limit: float, higher_is_worse: bool, alpha: float, tau2: float):
    """Verdict codes (indices into VERDICTS), lower and upper bounds and the statistic, vectorised over looks.
    Not `ready` (too few samples, undefined variance): waiting. Breach: the CS lies wholly on the worse side of
    `limit`; pass: wholly on the better side or touching it; else undecided."""
    est = np.asarray(estimate, dtype=np.float64)
    ready = np.asarray(ready, dtype=bool) & np.isfinite(est) & np.isfinite(variance)
    variance = np.where(ready, variance, 1.0)  # bounds and statistic are NaN where waiting
    width = np.where(ready, half_width(variance, alpha, tau2), np.nan)
    lower, upper = est - width, est + width
    worse = lower > limit if higher_is_worse else upper < limit
    within = upper <= limit if higher_is_worse else lower >= limit
    codes = np.select([~ready, worse, within], [WAITING, BREACH, PASS], UNDECIDED)
    return codes, lower, upper, np.where(ready, e_value(est, variance, limit, tau2), np.nan)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One look at one criterion: the canary's and the baseline's value of a metric, their difference (or ratio)
    with its (1 - alpha) confidence-sequence bounds, the plan's limit on the same scale, the statistic, and the
    verdict. Plain data: JSON-ready through `to_dict`."""

    metric: str  # "error rate", "AUC", "log loss"
    verdict: str  # waiting | breach | pass | undecided
    canary: float
    baseline: float
    estimate: float  # canary - baseline (error rate, AUC) or canary / baseline (log loss)
    lower: float
    upper: float
    limit: float  # the most the plan allows (error rate, log loss) or the least (AUC) on the estimate's scale
    statistic: float  # e-value against estimate == limit; a breach or a pass needs it >= 1/alpha
    alpha: float
    canary_samples: int
    baseline_samples: int
    min_samples: int

    @property
    def ratio(self) -> bool:
        return self.metric == "log loss"

    def _scale(self, x: float) -> str:
        return f"x{x:.4g}" if self.ratio else f"{x:+.4g}"

    @property
    def reason(self) -> str:
        """Why the verdict is what it is, in one sentence."""
        if self.verdict == "waiting":
            return f"{self.metric}: waiting for {self.min_samples} samples on each side"
        relation = "/" if self.ratio else "-"
        what = {"breach": "outside", "pass": "within", "undecided": "not yet known to be within"}[
            self.verdict
        ]
        return (
            f"canary {self.metric} {self.canary:.4g} vs baseline {self.baseline:.4g}: canary {relation} baseline "
            f"{self._scale(self.estimate)}, {100 * (1 - self.alpha):.4g} % bounds [{self._scale(self.lower)}, "
            f"{self._scale(self.upper)}], {what} the limit {self._scale(self.limit)}"
        )

    def describe(self) -> str:
        """The numbers in one line, for audit entries and the CLI."""
        if self.verdict == "waiting":
            return (
                f"waiting: {self.canary_samples} canary and {self.baseline_samples} baseline samples, "
                f"{self.min_samples} needed on each side"
            )
        return (
            f"{self.verdict}: {self.reason} (e-value {self.statistic:.3g}, {self.canary_samples} canary and "
            f"{self.baseline_samples} baseline samples)"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        return cls(**d)


def _comparison(
    metric: str,
    values: tuple[float, float],
    samples: tuple[int, int],
    estimate,
    variance,
    *,
    min_samples: int,
    limit: float,
    higher_is_worse: bool,
    alpha: float,
    tau2: float,
    shown=lambda x: x,  # from the scale tested on to the scale shown (exp for a log ratio)
) -> Comparison:
    ready = min(samples) >= min_samples
    codes, lower, upper, statistic = decide(
        estimate, variance, ready, limit=limit, higher_is_worse=higher_is_worse, alpha=alpha, tau2=tau2
    )
    return Comparison(
        metric=metric,
        verdict=VERDICTS[int(codes)],
        canary=float(values[0]),
        baseline=float(values[1]),
        estimate=float(shown(estimate)),
        lower=float(shown(lower)),
        upper=float(shown(upper)),
        limit=float(shown(limit)),
        statistic=float(statistic),
        alpha=alpha,
        canary_samples=int(samples[0]),
        baseline_samples=int(samples[1]),
        min_samples=min_samples,
    )


def error_rate_difference(canary_requests, canary_errors, baseline_requests, baseline_errors):
    """(canary - baseline error rate, its variance), vectorised; 0 requests give rate 0."""
    n_c, e_c = np.asarray(canary_requests, np.float64), np.asarray(canary_errors, np.float64)
    n_b, e_b = np.asarray(baseline_requests, np.float64), np.asarray(baseline_errors, np.float64)
    estimate = e_c / np.maximum(n_c, 1.0) - e_b / np.maximum(n_b, 1.0)
    p_c, p_b = (e_c + 1.0) / (n_c + 2.0), (e_b + 1.0) / (n_b + 2.0)  # Agresti-Caffo: never 0 or 1
    # Both sides take the larger rate's variance: a side that has seen few errors by chance would otherwise
    # look both better and more certain, and the bounds would exclude the truth on that side too often.
    q = np.minimum(np.maximum(p_c, p_b), 0.5)
    return estimate, q * (1.0 - q) * (1.0 / (n_c + 2.0) + 1.0 / (n_b + 2.0))


def compare_error_rates(
    canary_requests: int,
    canary_errors: int,
    baseline_requests: int,
    baseline_errors: int,
    *,
    margin: float,
    alpha: float = 0.05,
    min_samples: int = 1000,
    resolution: float | None = None,
) -> Comparison:
    """Is the canary's error rate no more than `margin` (absolute) above the baseline's? `resolution`: where the
    CS is tightest (default: the margin, or 0.005 for a zero margin). The normal approximation needs errors to
    count: with rates near 1 %, about 1000 requests a side (the tests measure coverage at 200 for equal 2 % rates,
    and at 1000 for 3 % against 1 %)."""
    estimate, variance = error_rate_difference(
        canary_requests, canary_errors, baseline_requests, baseline_errors
    )
    return _comparison(
        "error rate",
        (canary_errors / max(canary_requests, 1), baseline_errors / max(baseline_requests, 1)),
        (canary_requests, baseline_requests),
        estimate,
        variance,
        min_samples=min_samples,
        limit=margin,
        higher_is_worse=True,
        alpha=alpha,
        tau2=mixture_variance(resolution or max(margin, 0.005), alpha),
    )


def auc_difference(canary_auc, canary_variance, baseline_auc, baseline_variance):
    """(canary - baseline AUC, its variance): independent sides, so the variances add. Vectorised."""
    return np.subtract(canary_auc, baseline_auc), np.add(canary_variance, baseline_variance)


def compare_auc(
    canary: AucEstimate,
    baseline: AucEstimate,
    *,
    margin: float,
    alpha: float = 0.05,
    min_samples: int = 200,
    resolution: float | None = None,
) -> Comparison:
    """Is the canary's AUC no more than `margin` below the baseline's? Needs `min_samples` labelled rows per side
    (and both classes on each: the variance is undefined otherwise)."""
    estimate, variance = auc_difference(canary.auc, canary.variance, baseline.auc, baseline.variance)
    return _comparison(
        "AUC",
        (canary.auc, baseline.auc),
        (canary.count, baseline.count),
        estimate,
        variance,
        min_samples=min_samples,
        limit=-margin,
        higher_is_worse=False,
        alpha=alpha,
        tau2=mixture_variance(resolution or max(margin, 0.005), alpha),
    )


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, sum and sum of squares of per-row values (e.g. each labelled prediction's log loss): enough for a
    mean and its variance, and they add up across windows and gateways."""

    count: int = 0
    total: float = 0.0
    total_of_squares: float = 0.0

    @classmethod
    def of(cls, values) -> Moments:
        x = np.asarray(values, dtype=np.float64).ravel()
        return cls(int(x.size), float(x.sum()), float(np.dot(x, x)))

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.count + other.count, self.total + other.total, self.total_of_squares + other.total_of_squares
        )

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    @property
    def variance(self) -> float:
        """The sample variance of the values (ddof 1); NaN under two values."""
        if self.count < 2:
            return float("nan")
        return max(self.total_of_squares - self.total**2 / self.count, 0.0) / (self.count - 1)


def log_ratio(canary_count, canary_mean, canary_variance, baseline_count, baseline_mean, baseline_variance):
    """(log(canary mean / baseline mean), its delta-method variance), vectorised; NaN where a mean is not > 0."""
    n_c, m_c = np.asarray(canary_count, np.float64), np.asarray(canary_mean, np.float64)
    n_b, m_b = np.asarray(baseline_count, np.float64), np.asarray(baseline_mean, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = np.where((m_c > 0) & (m_b > 0), np.log(m_c) - np.log(m_b), np.nan)
        variance = canary_variance / (n_c * m_c**2) + baseline_variance / (n_b * m_b**2)
    return estimate, variance


def compare_log_loss(
    canary: Moments,
    baseline: Moments,
    *,
    ratio: float,
    alpha: float = 0.05,
    min_samples: int = 200,
    resolution: float | None = None,
) -> Comparison:
    """Is the canary's mean log loss at most `ratio` times the baseline's? Tested on the log of the ratio;
    `resolution` is on that scale (default log(ratio), or log(1.02) for a ratio of 1)."""
    if ratio <= 0:
        raise ValueError("the log-loss ratio limit must be positive")
    estimate, variance = log_ratio(
        canary.count, canary.mean, canary.variance, baseline.count, baseline.mean, baseline.variance
    )
    return _comparison(
        "log loss",
        (canary.mean, baseline.mean),
        (canary.count, baseline.count),
        estimate,
        variance,
        min_samples=min_samples,
        limit=math.log(ratio),
        higher_is_worse=True,
        alpha=alpha,
        tau2=mixture_variance(resolution or max(math.log(ratio), math.log(1.02)), alpha),
        shown=np.exp,
    )
