"""The canary judge, pure: what one look at a step's window says (a Judgement), and what the rollout does next.

Criteria: the error rate (the dispatcher's counts), the p99 latency (a ratio, as always) and, when the plan has a
`quality` block, AUC and log loss on labelled predictions (the monitor service's comparisons). The error rate and
quality are anytime-valid comparisons (meshserve.quality.sequential): confidence sequences that hold at every look
at once, so the judge may look as often as it likes. A canary within every limit is rolled back by chance with
probability at most the plan's alpha, over every look, criterion and step together: each comparison the rollout can
make gets an equal share of it (`comparison_alpha`).

The stepping rule:
- a breach of any criterion rolls the canary back at once;
- errors and p99 are guards: a step that has run its interval with `min_requests` on each side and no breach steps
  up. Each call's outcome is known when it is answered, so the interval is the exposure the plan chose; the
  anytime-valid test only makes a rollback need evidence rather than a noisy window;
- quality must pass: its bounds must show the canary within each limit. Labels arrive late (hours, for fraud), so a
  step that moved on without a pass would be judged on few labels or none, and a worse model would be promoted
  (tests/unit/test_rollout_simulation.py measures both rules);
- with quality criteria, a step (or the shadow gate) that is not healthy within `quality.max_wait_s` is rolled
  back, its reason saying that it could not be judged in time and why: the plan asked for an answer within that
  wait, and an unproven canary goes back to the stable rather than keep its share unjudged;
- reaching 100 % is promotion: no baseline traffic is left to compare with (the controller completes the rollout).

`fold` decides from the criteria's verdict codes, vectorised, so that the simulation (gateway.rollout.simulation)
runs this very rule over thousands of looks; `assess` builds one look's Judgement on it for the controller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from gateway.routing.routes import Rollout
from gateway.routing.stats import WindowSummary
from meshserve.quality import Comparison, compare_error_rates
from meshserve.quality.sequential import BREACH, PASS, UNDECIDED, WAITING

DEFAULT_ALPHA = 0.05  # the false-rollback rate of a plan without quality criteria
# The error rate is tested twice, each at half its alpha: bounds tightest at the margin resolve small differences
# over thousands of calls; bounds tightest at a 25-point difference roll back a canary failing most of its calls
# within a handful (5 calls that all failed, against ~40 with the first alone).
BROKEN_RESOLUTION = 0.25

VERDICTS = ("waiting", "healthy", "undecided", "breach", "expired")  # a Judgement's; indices are fold's codes
V_WAITING, V_HEALTHY, V_UNDECIDED, V_BREACH, V_EXPIRED = range(5)
ACTIONS = ("wait", "step", "rollback")
WAIT, STEP, ROLLBACK = range(3)

# The monitor's metric names (Compare's criteria, Prometheus labels) and the names comparisons show.
METRICS = {"error_rate": "error rate", "auc": "AUC", "log_loss": "log loss"}


def metric_key(shown: str) -> str:
    """'AUC' -> 'auc': the label-safe name of a comparison's metric."""
    return next((key for key, name in METRICS.items() if name == shown), shown.lower().replace(" ", "_"))


@dataclass(frozen=True, slots=True)
class Window:
    """One side of a judgement: a variant's outcomes since the step started (this gateway's and, with a control
    store, every gateway's published ones)."""

    variant: str
    requests: int
    errors: int
    p99_s: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, variant: str, summary: WindowSummary) -> Window:
        return cls(variant, summary.requests, summary.errors, summary.p99_s)


# -- how much evidence each comparison needs -----------------------------------------------------------------
def judged_steps(plan: Rollout) -> int:
    """Steps compared with a baseline: every one below 100 % (at least one, for a plan that starts at 100 %)."""
    return max(sum(1 for weight in plan.steps if weight < 100.0), 1)


def comparison_alpha(plan: Rollout) -> float:
    """Each comparison's share of the plan's alpha: the error rate and each quality criterion at every judged step,
    and each quality criterion at the shadow gate."""
    quality = len(plan.quality.criteria) if plan.quality is not None else 0
    count = judged_steps(plan) * (1 + quality) + (quality if plan.require_shadow else 0)
    total = plan.quality.alpha if plan.quality is not None else DEFAULT_ALPHA
    return total / count


def error_rate_tests(plan: Rollout) -> tuple[tuple[float, float], ...]:
    """(alpha, resolution) of each error-rate comparison: one tightest at the margin, one at BROKEN_RESOLUTION."""
    alpha, fine = comparison_alpha(plan), max(plan.max_error_rate_increase, 0.005)
    if fine >= BROKEN_RESOLUTION:
        return ((alpha, fine),)
    return ((alpha / 2, fine), (alpha / 2, BROKEN_RESOLUTION))


def error_rate_comparison(plan: Rollout, canary: Window, baseline: Window) -> Comparison:
    """The error-rate comparison shown: the one that found a breach, else the one tightest at the margin."""
    found = [
        compare_error_rates(
            canary.requests, canary.errors, baseline.requests, baseline.errors,
            margin=plan.max_error_rate_increase, alpha=alpha, min_samples=plan.min_requests, resolution=resolution,
        )
        for alpha, resolution in error_rate_tests(plan)
    ]  # fmt: skip
    return next((c for c in found if c.verdict == "breach"), found[0])


def error_rate_code(codes: Sequence) -> np.ndarray:
    """The error-rate criterion's verdict code from its tests' codes (vectorised): a breach if any finds one."""
    stacked = np.asarray(codes)
    return np.where((stacked == BREACH).any(axis=0), BREACH, stacked[0])


# -- the rule ------------------------------------------------------------------------------------------------
def fold(
    error,
    p99_breach,
    quality: Sequence,
    labels: Sequence[tuple],
    *,
    min_labels: int,
    elapsed_s,
    interval_s: float,
    max_wait_s: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(verdict, action) codes of one look, or of many (numpy arrays over looks; scalars work too).

    error: the error-rate criterion's verdict code (sequential.WAITING...UNDECIDED), None where it is not judged
    (the shadow gate); p99_breach: whether the p99 is over its limit; quality: each quality criterion's verdict
    code as the monitor gave it, with `labels` its (canary, baseline) labelled counts: under `min_labels` a side
    is still waiting whatever the monitor says; max_wait_s: None where a step may wait for ever (no quality)."""
    elapsed = np.asarray(elapsed_s, dtype=np.float64)
    breach = np.asarray(p99_breach, dtype=bool)
    waiting = np.zeros(elapsed.shape, dtype=bool)
    undecided = np.zeros(elapsed.shape, dtype=bool)
    if error is not None:
        error = np.asarray(error)
        breach = breach | (error == BREACH)
        waiting = waiting | (error == WAITING)
    for code, (canary_labels, baseline_labels) in zip(quality, labels, strict=True):
        code = np.where(np.minimum(canary_labels, baseline_labels) < min_labels, WAITING, code)
        breach, waiting, undecided = (
            breach | (code == BREACH),
            waiting | (code == WAITING),
            undecided | (code == UNDECIDED),
        )
    verdict = np.select([breach, waiting, undecided], [V_BREACH, V_WAITING, V_UNDECIDED], V_HEALTHY)
    if max_wait_s is not None:
        late = ((verdict == V_WAITING) | (verdict == V_UNDECIDED)) & (elapsed >= max_wait_s)
        verdict = np.where(late, V_EXPIRED, verdict)
    return verdict, actions(verdict, elapsed, interval_s)


def actions(verdict, elapsed_s, interval_s: float) -> np.ndarray:
    """Action codes from verdict codes (vectorised): roll back a breach or an expired wait; step up once healthy
    with the interval run."""
    verdict, elapsed = np.asarray(verdict), np.asarray(elapsed_s, dtype=np.float64)
    return np.select(
        [(verdict == V_BREACH) | (verdict == V_EXPIRED), (verdict == V_HEALTHY) & (elapsed >= interval_s)],
        [ROLLBACK, STEP],
        WAIT,
    )


# -- one look, in words --------------------------------------------------------------------------------------
def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.2f} pts"


def _level(c: Comparison) -> str:
    return f"{100 * (1 - c.alpha):.4g} %"


def figures(c: Comparison) -> str:
    """One comparison's numbers in one line: values, the difference (or ratio) in its bounds, the limit, the
    e-value and the samples."""
    unit = "requests" if c.metric == "error rate" else "labels"
    if c.verdict == "waiting":
        return (
            f"{c.metric} waiting: {c.canary_samples} canary and {c.baseline_samples} baseline {unit}, "
            f"{c.min_samples} needed on each side"
        )
    if c.metric == "error rate":
        value, shift = _percent, _points
    elif c.metric == "log loss":
        value, shift = (lambda x: f"{x:.4f}"), (lambda x: f"x{x:.3f}")
    else:
        value, shift = (lambda x: f"{x:.4f}"), (lambda x: f"{x:+.4f}")
    return (
        f"{c.metric} {c.verdict}: canary {value(c.canary)}, baseline {value(c.baseline)}, "
        f"{'ratio' if c.ratio else 'difference'} {shift(c.estimate)} in [{shift(c.lower)}, {shift(c.upper)}] "
        f"({_level(c)}), limit {shift(c.limit)}, e-value {c.statistic:.3g}, "
        f"{c.canary_samples}/{c.baseline_samples} {unit}"
    )


def _bounds(c: Comparison) -> str:
    on = "ratio" if c.ratio else "difference"
    if c.metric == "error rate":
        shown = f"[{_points(c.lower)}, {_points(c.upper)}]"
    elif c.ratio:
        shown = f"[x{c.lower:.3f}, x{c.upper:.3f}]"
    else:
        shown = f"[{c.lower:+.4f}, {c.upper:+.4f}]"
    return f"anytime-valid {_level(c)} bounds on the {on} {shown}, e-value {c.statistic:.3g}"


def breach_reason(c: Comparison, side: str, baseline: str) -> str:
    """Why a breaching comparison is one, naming the metric: `side` is 'canary' or 'shadow NAME'."""
    if c.metric == "error rate":
        return (
            f"{side} error rate {c.canary:.1%} exceeds baseline {c.baseline:.1%} by more than "
            f"{c.limit:.1%} ({_bounds(c)})"
        )
    if c.metric == "log loss":
        return (
            f"{side} log loss {c.canary:.4f} is more than {c.limit:.4g}x {baseline}'s {c.baseline:.4f} "
            f"({_bounds(c)})"
        )
    return (
        f"{side} {c.metric} {c.canary:.3f} is below {baseline} {c.baseline:.3f} by more than {-c.limit:.4g} "
        f"({_bounds(c)})"
    )


def _open_reason(c: Comparison) -> str:
    """Why a comparison that is waiting or undecided does not pass yet."""
    if c.verdict == "waiting":
        return figures(c)
    return f"{c.metric} not yet shown within its limit: {figures(c)}"


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the judge measured at one evaluation and what it made of it, with the plan's thresholds: shown by the
    admin API and Prometheus, and written into the audit entry of the step, completion or rollback it decided."""

    at: float  # wall-clock time of the evaluation
    step: int  # the step judged (index into the plan's steps)
    verdict: str  # VERDICTS: waiting | healthy | undecided (quality not yet shown within) | breach | expired
    canary: Window
    baseline: Window
    max_error_rate_increase: float
    max_p99_ratio: float
    min_requests: int
    reason: str = ""  # why the verdict is not healthy
    # the error rate's (none for a shadow), then each quality criterion's, as judged
    comparisons: tuple[Comparison, ...] = ()
    shadow: str = ""  # the shadow judged (the `require_shadow` gate, before the first step); "" for a step

    def describe(self) -> str:
        """The numbers in one line, for audit entries and the CLI."""
        compared = "; ".join(figures(c) for c in self.comparisons)
        if self.shadow:
            against = f"shadow {self.shadow} against {self.baseline.variant}"
            return f"{self.verdict}: {against}: {compared or 'no figures yet'}"

        def side(w: Window) -> str:
            return (
                f"{w.variant} {w.requests} requests, {w.error_rate:.1%} errors, p99 {w.p99_s * 1000:.1f} ms"
            )

        return (
            f"{self.verdict} at step {self.step + 1}: canary {side(self.canary)}; baseline {side(self.baseline)}; "
            f"thresholds: error rate +{self.max_error_rate_increase:.1%}, p99 x{self.max_p99_ratio:g}, "
            f"{self.min_requests} requests" + (f"; {compared}" if compared else "")
        )

    def to_dict(self) -> dict:
        """JSON-ready, for the control store (rollout state travels there as plain data; NaN as null)."""
        return {
            "at": self.at, "step": self.step, "verdict": self.verdict, "reason": self.reason,
            "canary": [self.canary.variant, self.canary.requests, self.canary.errors, self.canary.p99_s],
            "baseline": [self.baseline.variant, self.baseline.requests, self.baseline.errors, self.baseline.p99_s],
            "max_error_rate_increase": self.max_error_rate_increase, "max_p99_ratio": self.max_p99_ratio,
            "min_requests": self.min_requests, "shadow": self.shadow,
            "comparisons": [
                {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in c.to_dict().items()}
                for c in self.comparisons
            ],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Judgement:
        comparisons = tuple(
            Comparison.from_dict({k: math.nan if v is None else v for k, v in c.items()})
            for c in d.get("comparisons", ())  # absent in state written before comparisons were kept
        )
        return cls(
            d["at"], d["step"], d["verdict"], Window(*d["canary"]), Window(*d["baseline"]),
            d["max_error_rate_increase"], d["max_p99_ratio"], d["min_requests"], d.get("reason", ""),
            comparisons, d.get("shadow", ""),
        )  # fmt: skip


def judge(plan: Rollout, canary: Window, baseline: Window) -> str | None:
    """Why the canary breaches the plan's error-rate or p99 limit, or None. Pure."""
    errors = error_rate_comparison(plan, canary, baseline)
    if errors.verdict == "breach":
        return breach_reason(errors, "canary", baseline.variant)
    return _p99_breach(plan, canary, baseline)


def _p99_breach(plan: Rollout, canary: Window, baseline: Window) -> str | None:
    """Why the canary's p99 is over the plan's ratio of the baseline's (once it has `min_requests`), or None."""
    slow = baseline.p99_s > 0 and canary.p99_s > plan.max_p99_ratio * baseline.p99_s
    if canary.requests >= plan.min_requests and slow:
        return (
            f"canary p99 {canary.p99_s * 1000:.1f} ms is over {plan.max_p99_ratio}x "
            f"the baseline's {baseline.p99_s * 1000:.1f} ms"
        )
    return None


def quality_comparisons(
    plan: Rollout, found: Sequence[Comparison] | None
) -> tuple[list[Comparison | None], list[int], list[tuple[int, int]]]:
    """The monitor's comparisons in the plan's criteria order (None: missing), their codes, and label counts."""
    assert plan.quality is not None
    by_metric = {metric_key(c.metric): c for c in found or ()}
    ordered = [by_metric.get(metric) for metric, _ in plan.quality.criteria]
    codes = [WAITING if c is None else VERDICT_CODES[c.verdict] for c in ordered]
    labels = [(0, 0) if c is None else (c.canary_samples, c.baseline_samples) for c in ordered]
    return ordered, codes, labels


VERDICT_CODES = {"waiting": WAITING, "breach": BREACH, "pass": PASS, "undecided": UNDECIDED}


def _with_min_labels(c: Comparison, min_labels: int) -> Comparison:
    """A comparison under the plan's `min_labels` is waiting, whatever the monitor's own minimum let it say."""
    if min(c.canary_samples, c.baseline_samples) >= min_labels:
        return c if c.min_samples >= min_labels else replace(c, min_samples=min_labels)
    return replace(
        c, verdict="waiting", min_samples=min_labels, lower=math.nan, upper=math.nan, statistic=math.nan
    )


def assess(
    plan: Rollout,
    step: int,
    canary: Window,
    baseline: Window,
    at: float,
    *,
    elapsed_s: float = 0.0,
    quality: Sequence[Comparison] | None = None,
    quality_note: str = "",
    shadow: str = "",
) -> Judgement:
    """The judgement of one look at a step's window (or, with `shadow`, at the shadow gate's). Pure.

    quality: the monitor's comparisons for the plan's quality criteria (None: none could be had; `quality_note`
    says why, e.g. no monitor service configured); elapsed_s: how long the step (or gate) has run."""
    shown: list[Comparison] = []
    if shadow:
        error_code, p99 = None, None
    else:
        errors = error_rate_comparison(plan, canary, baseline)
        shown.append(errors)
        error_code, p99 = VERDICT_CODES[errors.verdict], _p99_breach(plan, canary, baseline)
    ordered: list[Comparison | None] = []
    codes: list[int] = []
    labels: list[tuple[int, int]] = []
    min_labels = plan.quality.min_labels if plan.quality is not None else 0
    if plan.quality is not None:
        ordered, codes, labels = quality_comparisons(plan, quality)
        ordered = [None if c is None else _with_min_labels(c, min_labels) for c in ordered]
        shown.extend(c for c in ordered if c is not None)
    verdict_code, _ = fold(
        error_code, p99 is not None, codes, labels, min_labels=min_labels, elapsed_s=elapsed_s,
        interval_s=0.0 if shadow else plan.interval_s,
        max_wait_s=None if plan.quality is None else plan.quality.max_wait_s,
    )  # fmt: skip
    verdict = VERDICTS[int(verdict_code)]
    who = f"shadow {shadow}" if shadow else "canary"
    reason = ""
    criteria = [] if plan.quality is None else [metric for metric, _ in plan.quality.criteria]
    missing = [
        f"{METRICS[metric]}: {quality_note or 'the monitor gave no comparison'}"
        for metric, c in zip(criteria, ordered, strict=True) if c is None
    ]  # fmt: skip
    if verdict == "breach":  # named in the order of old: the error rate, the p99, then quality
        first = next((c for c in shown if c.verdict == "breach"), None)
        if p99 is not None and (first is None or first.metric != "error rate"):
            reason = p99
        elif first is not None:
            reason = breach_reason(first, who, baseline.variant)
    elif verdict in ("waiting", "undecided", "expired"):
        open_ = [_open_reason(c) for c in ordered if c is not None and c.verdict in ("waiting", "undecided")]
        if error_code == WAITING:
            open_.insert(0, f"waiting for {plan.min_requests} requests on each side (canary {canary.requests}, "
                            f"baseline {baseline.requests})")  # fmt: skip
        reason = "; ".join(open_ + missing)
        if verdict == "expired":
            assert plan.quality is not None
            what = f"shadow {shadow}" if shadow else f"step {step + 1}"
            reason = f"{what} could not be judged within {plan.quality.max_wait_s:g} s: {reason}"
    return Judgement(
        at, step, verdict, canary, baseline, plan.max_error_rate_increase, plan.max_p99_ratio, plan.min_requests,
        reason, tuple(shown), shadow,
    )  # fmt: skip


def next_action(plan: Rollout, judgement: Judgement, elapsed_s: float) -> str:
    """What the rollout does after this judgement (`fold`'s rule): wait, step (up, or from the shadow gate to the
    first step, which needs no interval) or roll back."""
    interval = 0.0 if judgement.shadow else plan.interval_s
    return ACTIONS[int(actions(VERDICTS.index(judgement.verdict), elapsed_s, interval))]


def promotes(plan: Rollout, step: int) -> bool:
    """Whether reaching `step` completes the rollout: the canary then has all traffic, nothing to compare with."""
    return plan.steps[step] >= 100.0
