"""The rollout judge, rehearsed: a `Rollout` plan, as a routes file declares it, judged by this judge's own rule
on meshserve.quality.simulation's seeded traffic and late labels, on a simulated clock. Runs in seconds.

Each step below 100 % is judged on its own window, at every look (`look_every_s`), as the controller would:
every comparison the controller makes (the error rate's tests, `judgement.error_rate_tests`, on the step's
counts; the AUC criterion as the monitor answers Compare, at the alpha the controller asks for) is computed for a
block of looks at once, and `judgement.fold` (the rule `assess` and `next_action` use) turns them into each look's
verdict and action. The first look whose action is not "wait" decides the step; that look is then judged once more
through the controller's own path (`assess` on the public comparisons, then `next_action`), which must agree.
Reaching 100 % is promotion; a step whose last judged weight is below 100 % completes the rollout when it steps.

Outcomes are the simulation's: promoted, rolled_back (a breach) or expired (quality not shown within its limits by
`quality.max_wait_s`: this judge rolls that back too, its reason saying it could not be judged in time).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from gateway.rollout.judgement import (
    ACTIONS,
    V_EXPIRED,
    VERDICTS,
    WAIT,
    Window,
    assess,
    comparison_alpha,
    error_rate_code,
    error_rate_tests,
    fold,
    next_action,
)
from gateway.routing.routes import Rollout
from meshserve.quality.sequential import BREACH, decide, error_rate_difference, mixture_variance
from meshserve.quality.simulation import ErrorCase, Outcome, Plan, QualityCase, Summary, Traffic

__all__ = ["rehearse", "summarise"]


def _error_codes(plan: Rollout, n_c, e_c, n_b, e_b) -> np.ndarray:
    """The error-rate criterion's code at each look, from the counts: each of its tests as compare_error_rates
    runs it."""
    estimate, variance = error_rate_difference(n_c, e_c, n_b, e_b)
    ready = np.minimum(n_c, n_b) >= plan.min_requests
    codes = [
        decide(estimate, variance, ready, limit=plan.max_error_rate_increase, higher_is_worse=True, alpha=alpha,
               tau2=mixture_variance(resolution, alpha))[0]
        for alpha, resolution in error_rate_tests(plan)
    ]  # fmt: skip
    return error_rate_code(codes)


def _counts(case, looks, traffic: Traffic, share: float):
    """(canary requests, errors, baseline requests, errors) at each look."""
    if isinstance(case, ErrorCase):
        return looks.canary_n, looks.extra["e_c"], looks.baseline_n, looks.extra["e_b"]
    # the quality case: every call answers (no errors); the calls made by each look
    made = traffic.requests_per_s * looks.t
    zero = np.zeros_like(made)
    return np.floor(made * share), zero, np.floor(made * (1.0 - share)), zero


def rehearse(
    plan: Rollout,
    traffic: Traffic,
    case: QualityCase | ErrorCase,
    rng: np.random.Generator,
    *,
    look_every_s: float = 5.0,
    horizon_s: float | None = None,
    quality_must_pass: bool = True,
) -> Outcome:
    """One rollout of `plan`. horizon_s: how long a step without quality criteria may wait for `min_requests`
    (default 4 intervals). quality_must_pass=False judges quality as a guard (a step moves on unless it breaches):
    the rule this judge does not use, kept to measure why."""
    if isinstance(case, QualityCase):
        assert plan.quality is not None and plan.quality.max_auc_decrease == case.margin, (
            "the plan's AUC limit"
        )
    else:
        assert plan.max_error_rate_increase == case.margin, "the plan's error-rate limit"
    wait = plan.quality.max_wait_s if plan.quality is not None else horizon_s or 4 * plan.interval_s
    min_labels = plan.quality.min_labels if plan.quality is not None else 0
    sim = Plan(tuple(plan.steps), plan.interval_s, max(min_labels, 1), wait, look_every_s)
    alpha = comparison_alpha(plan)
    elapsed, last = 0.0, None
    for step, weight in enumerate(plan.steps):
        if weight >= 100.0:
            return Outcome("promoted", step - 1, elapsed, last)
        share = weight / 100.0
        decided = None
        for looks in case.looks(rng, sim, traffic, share):
            n_c, e_c, n_b, e_b = _counts(case, looks, traffic, share)
            quality, labels, guard = [], [], np.zeros(looks.t.shape, bool)  # guard: a breach outside the rule
            if isinstance(case, QualityCase):
                limit, higher_is_worse, resolution = case.criterion()
                ready = (
                    np.minimum(looks.canary_n, looks.baseline_n) >= sim.min_samples
                )  # the monitor's minimum
                code = decide(looks.estimate, looks.variance, ready, limit=limit, higher_is_worse=higher_is_worse,
                              alpha=alpha, tau2=mixture_variance(resolution, alpha))[0]  # fmt: skip
                if quality_must_pass:
                    quality, labels = [code], [(looks.canary_n, looks.baseline_n)]
                else:
                    guard = code == BREACH
            verdict, action = fold(
                _error_codes(plan, n_c, e_c, n_b, e_b), guard, quality, labels,
                min_labels=min_labels, elapsed_s=looks.t, interval_s=plan.interval_s,
                max_wait_s=plan.quality.max_wait_s if plan.quality is not None and quality_must_pass else None,
            )  # fmt: skip
            hit = action != WAIT
            if hit.any():
                i = int(np.argmax(hit))
                decided = (
                    looks,
                    i,
                    int(verdict[i]),
                    ACTIONS[int(action[i])],
                    (n_c[i], e_c[i], n_b[i], e_b[i]),
                )
                break
        if decided is None:  # no look at all before the wait ran out (labels later than it), or no decision
            return Outcome("expired", step, elapsed + wait, last)
        looks, i, verdict, action, counts = decided
        at = float(looks.t[i])
        comparison = None
        if quality_must_pass:  # the controller's path at the deciding look says the same
            found = (case.comparison(looks, i, sim, alpha),) if isinstance(case, QualityCase) else None
            canary, baseline = (
                Window("canary", int(counts[0]), int(counts[1]), 0.0),
                Window("stable", int(counts[2]), int(counts[3]), 0.0),
            )
            judgement = assess(plan, step, canary, baseline, at, elapsed_s=at, quality=found)
            assert (judgement.verdict, next_action(plan, judgement, at)) == (VERDICTS[verdict], action), (
                judgement
            )
            comparison = judgement.comparisons[-1]
        elapsed += at
        if action == "rollback":
            return Outcome("expired" if verdict == V_EXPIRED else "rolled_back", step, elapsed, comparison)
        last = comparison
    return Outcome("promoted", len(plan.steps) - 1, elapsed, last)


def summarise(
    plan: Rollout, traffic: Traffic, case: QualityCase | ErrorCase, runs: int, seed: int, **options
) -> Summary:
    """`runs` independent rollouts; run i draws from default_rng([seed, i]), so any one can be replayed."""
    outcomes = [
        rehearse(plan, traffic, case, np.random.default_rng([seed, i]), **options) for i in range(runs)
    ]
    counts = Counter(o.decision for o in outcomes)
    hours = float(np.median([o.at_s for o in outcomes])) / 3600.0
    return Summary(
        runs, counts["promoted"] / runs, counts["rolled_back"] / runs, counts["expired"] / runs, hours
    )
