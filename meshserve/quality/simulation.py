"""A seeded simulation of a canary rollout judged by `sequential`, on a simulated clock: runs in seconds.

A plan steps the canary's share of traffic (5 -> 25 -> 50 -> 100 %). Requests arrive as a Poisson stream; each
prediction's label arrives after a delay (one hour give or take a jitter); each step judges only its own window,
the predictions made since it started, as their labels come in. A judge looks every few seconds: it rolls back at
the first breach, steps up once the step has run its interval with a pass, and gives up ("expired") when a step has
not passed within its longest wait. Reaching 100 % is promotion (there is no baseline left to compare with).

Models: a binary classifier whose AUC is known exactly, the binormal one (negatives' scores N(0, 1), positives'
N(d, 1): AUC = Phi(d / sqrt 2)), for quality; or a fixed error rate per request, for the error-rate comparison.

How it stays fast without loops over requests: the requests of a step form a Poisson stream and delays are
independent, so (the displacement theorem) the labels of the step's predictions arrive as a Poisson stream too,
whose expected count by time t after the step started is rate * integral_0^t P(delay <= x) dx; and Poisson splitting
makes each look's new labels per class and score bin independent Poisson counts. Drawing those counts per look is
the same in distribution as drawing every request, its label and its delay, at a cost that does not grow with
traffic. Scores are counted in bins (`auc.ScoreHistogram`'s estimator, `bins` of them), as a monitor would keep
them. Errors are known when the answer is: the error-rate case has no label delay.

The plan's alpha is split evenly over its judged steps (each step's window is its own comparison), so the chance of
a false rollback over the whole rollout stays within alpha.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from meshserve.quality.auc import AucEstimate, histogram_auc
from meshserve.quality.sequential import (
    BREACH,
    PASS,
    Comparison,
    auc_difference,
    compare_auc,
    compare_error_rates,
    decide,
    error_rate_difference,
    mixture_variance,
)

BLOCK_S = 1800.0  # looks are drawn and judged a simulated half hour at a time, so a decided step stops early
_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)  # the canary's share in percent
    interval_s: float = 3600.0  # least time at a step before it may step up
    min_samples: int = 2000  # per side in the step's window (labelled predictions; requests for errors)
    longest_wait_s: float = 4 * 3600.0  # a step that has not passed by then ends the rollout: expired
    look_every_s: float = 5.0
    alpha: float = 0.05  # false-rollback rate of the whole rollout

    @property
    def judged_steps(self) -> tuple[float, ...]:
        return tuple(share for share in self.steps if share < 100.0)


@dataclass(frozen=True, slots=True)
class Traffic:
    requests_per_s: float = 50.0
    label_delay_s: float = 3600.0
    label_jitter_s: float = 600.0  # each label's delay is uniform in delay +- jitter

    def labelled_by(self, t: np.ndarray) -> np.ndarray:
        """Expected labels per request-per-second of a stream started at 0, arrived by time t: the integral of
        the delay's distribution function from 0 to t."""
        lo = max(self.label_delay_s - self.label_jitter_s, 0.0)
        hi = self.label_delay_s + self.label_jitter_s
        t = np.asarray(t, dtype=np.float64)
        if hi == lo:
            return np.maximum(t - lo, 0.0)
        ramp = np.clip(t - lo, 0.0, hi - lo)
        return ramp**2 / (2.0 * (hi - lo)) + np.maximum(t - hi, 0.0)


@dataclass(frozen=True, slots=True)
class Classifier:
    """A binormal classifier: negatives score N(0, 1), positives N(d, 1), so that its AUC is `auc`."""

    auc: float
    positive_rate: float = 0.5

    @property
    def separation(self) -> float:
        return math.sqrt(2.0) * _NORMAL.inv_cdf(self.auc)

    def bin_shares(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(negatives', positives') probability of each score bin; bins as in `auc.ScoreHistogram`."""
        neg = np.diff([0.0, *(_NORMAL.cdf(e) for e in edges), 1.0])
        pos = np.diff([0.0, *(_NORMAL.cdf(e - self.separation) for e in edges), 1.0])
        return neg, pos


@dataclass(frozen=True, slots=True)
class _Looks:
    """One block of looks at a step's window: cumulative figures per look."""

    t: np.ndarray  # seconds since the step started
    canary_value: np.ndarray
    baseline_value: np.ndarray
    estimate: np.ndarray
    variance: np.ndarray
    canary_n: np.ndarray
    baseline_n: np.ndarray
    extra: dict  # what the case needs to rebuild the deciding look through the public API


@dataclass(frozen=True, slots=True)
class QualityCase:
    """Canary against baseline on AUC: the canary's AUC may be at most `margin` below the baseline's."""

    baseline: Classifier
    canary: Classifier
    margin: float = 0.01
    bins: int = 32

    def edges(self) -> np.ndarray:
        top = max(self.baseline.separation, self.canary.separation)
        return np.linspace(-2.5, top + 2.5, self.bins - 1)

    def looks(self, rng: np.random.Generator, plan: Plan, traffic: Traffic, share: float) -> Iterator[_Looks]:
        edges = self.edges()
        sides = []
        for model, fraction in ((self.canary, share), (self.baseline, 1.0 - share)):
            neg, pos = model.bin_shares(edges)
            cell = np.stack([(1.0 - model.positive_rate) * neg, model.positive_rate * pos])  # (class, bin)
            sides.append((traffic.requests_per_s * fraction, cell))
        first = max(traffic.label_delay_s - traffic.label_jitter_s, 0.0)  # no label can arrive before
        start = math.floor(first / plan.look_every_s) * plan.look_every_s
        totals = [np.zeros((2, self.bins)), np.zeros((2, self.bins))]
        for t in _blocks(plan, start):
            arrived = np.diff(traffic.labelled_by(np.r_[t[0] - plan.look_every_s, t]))
            figures = []
            for i, (rate, cell) in enumerate(sides):
                counts = np.cumsum(rng.poisson(rate * arrived[:, None, None] * cell), axis=0) + totals[i]
                totals[i] = counts[-1]
                auc, variance, _ = histogram_auc(counts[:, 1], counts[:, 0])
                figures.append((auc, variance, counts[:, 1].sum(axis=1), counts[:, 0].sum(axis=1)))
            (a_c, v_c, p_c, n_c), (a_b, v_b, p_b, n_b) = figures
            estimate, variance = auc_difference(a_c, v_c, a_b, v_b)
            yield _Looks(t, a_c, a_b, estimate, variance, p_c + n_c, p_b + n_b,
                         {"canary": (v_c, p_c, n_c), "baseline": (v_b, p_b, n_b)})  # fmt: skip

    def comparison(self, looks: _Looks, i: int, plan: Plan, alpha: float) -> Comparison:
        def side(value: np.ndarray, name: str) -> AucEstimate:
            variance, positives, negatives = (x[i] for x in looks.extra[name])
            return AucEstimate(float(value[i]), float(variance), int(positives), int(negatives))

        return compare_auc(
            side(looks.canary_value, "canary"), side(looks.baseline_value, "baseline"),
            margin=self.margin, alpha=alpha, min_samples=plan.min_samples,
        )  # fmt: skip

    def criterion(self) -> tuple[float, bool, float]:
        """(limit, higher is worse, resolution) of the comparison."""
        return -self.margin, False, self.margin


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """Canary against baseline on error rate: the canary's may be at most `margin` (absolute) above."""

    baseline_error_rate: float
    canary_error_rate: float
    margin: float = 0.01

    def looks(self, rng: np.random.Generator, plan: Plan, traffic: Traffic, share: float) -> Iterator[_Looks]:
        rates = (self.canary_error_rate, self.baseline_error_rate)
        per_look = [traffic.requests_per_s * f * plan.look_every_s for f in (share, 1.0 - share)]
        totals = [(0, 0), (0, 0)]
        for t in _blocks(plan, 0.0):
            figures = []
            for i in range(2):
                requests = rng.poisson(per_look[i], t.size)
                errors = rng.binomial(requests, rates[i])
                n, e = np.cumsum(requests) + totals[i][0], np.cumsum(errors) + totals[i][1]
                totals[i] = (n[-1], e[-1])
                figures.append((n, e))
            (n_c, e_c), (n_b, e_b) = figures
            estimate, variance = error_rate_difference(n_c, e_c, n_b, e_b)
            yield _Looks(t, e_c / np.maximum(n_c, 1), e_b / np.maximum(n_b, 1), estimate, variance, n_c, n_b,
                         {"e_c": e_c, "e_b": e_b})  # fmt: skip

    def comparison(self, looks: _Looks, i: int, plan: Plan, alpha: float) -> Comparison:
        return compare_error_rates(
            int(looks.canary_n[i]), int(looks.extra["e_c"][i]), int(looks.baseline_n[i]),
            int(looks.extra["e_b"][i]), margin=self.margin, alpha=alpha, min_samples=plan.min_samples,
        )  # fmt: skip

    def criterion(self) -> tuple[float, bool, float]:
        return self.margin, True, self.margin


def _blocks(plan: Plan, start: float) -> Iterator[np.ndarray]:
    """Look times after `start` up to the longest wait, a block at a time."""
    every = plan.look_every_s
    per_block = max(int(BLOCK_S / every), 1)
    last = math.floor(plan.longest_wait_s / every + 1e-9)
    j = math.floor(start / every + 1e-9) + 1
    while j <= last:
        stop = min(j + per_block, last + 1)
        yield np.arange(j, stop) * every
        j = stop


@dataclass(frozen=True, slots=True)
class Outcome:
    decision: str  # promoted | rolled_back (a breach) | expired (a step did not pass within its longest wait)
    step: int  # the step that decided: index into the plan's steps
    at_s: float  # simulated seconds since the rollout started
    comparison: Comparison | None  # the look that decided, or an expired step's last (None: it had no look)


def simulate(
    plan: Plan, traffic: Traffic, case: QualityCase | ErrorCase, rng: np.random.Generator
) -> Outcome:
    """One rollout, judged every `plan.look_every_s` simulated seconds."""
    judged = plan.judged_steps
    alpha = plan.alpha / len(judged)  # one comparison per judged step
    limit, higher_is_worse, resolution = case.criterion()
    tau2 = mixture_variance(resolution, alpha)
    elapsed, last = 0.0, None
    for step, share in enumerate(judged):
        decided, looks = None, None
        for looks in case.looks(rng, plan, traffic, share / 100.0):
            ready = np.minimum(looks.canary_n, looks.baseline_n) >= plan.min_samples
            codes, *_ = decide(looks.estimate, looks.variance, ready, limit=limit,
                               higher_is_worse=higher_is_worse, alpha=alpha, tau2=tau2)  # fmt: skip
            hit = (codes == BREACH) | ((codes == PASS) & (looks.t >= plan.interval_s))
            if hit.any():
                i = int(np.argmax(hit))
                decided = (looks.t[i], case.comparison(looks, i, plan, alpha))
                break
        if decided is None:  # the step's last look, if it had any, says how far it got
            final = None if looks is None else case.comparison(looks, -1, plan, alpha)
            return Outcome("expired", step, elapsed + plan.longest_wait_s, final)
        at, last = decided
        elapsed += at
        assert last.verdict in ("breach", "pass"), last  # the public API sees what the vectorised judge saw
        if last.verdict == "breach":
            return Outcome("rolled_back", step, elapsed, last)
    return Outcome("promoted", len(judged) - 1, elapsed, last)


@dataclass(frozen=True, slots=True)
class Summary:
    runs: int
    promoted: float  # share of runs
    rolled_back: float
    expired: float
    median_hours: float  # simulated time to the decision


def summarise(plan: Plan, traffic: Traffic, case: QualityCase | ErrorCase, runs: int, seed: int) -> Summary:
    """`runs` independent rollouts; run i draws from default_rng([seed, i]), so any one can be replayed."""
    outcomes = [simulate(plan, traffic, case, np.random.default_rng([seed, i])) for i in range(runs)]
    counts = Counter(o.decision for o in outcomes)
    hours = float(np.median([o.at_s for o in outcomes])) / 3600.0
    return Summary(
        runs, counts["promoted"] / runs, counts["rolled_back"] / runs, counts["expired"] / runs, hours
    )
