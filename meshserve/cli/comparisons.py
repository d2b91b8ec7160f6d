"""The judge's anytime-valid comparisons (admin API `Comparison`) as `canary status` shows them: plain JSON for
`-o json`, and two short lines each for a terminal of 80 columns (what was compared, then the bounds)."""

from __future__ import annotations

import math

from rich.markup import escape

from meshserve.admin.v1 import admin_pb2


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def comparison_dict(c: admin_pb2.Comparison) -> dict:
    """Plain JSON: NaN (no bounds while waiting) as null."""
    return {
        "metric": c.metric, "verdict": c.verdict, "canary": c.canary, "baseline": c.baseline,
        "estimate": _number(c.estimate), "lower": _number(c.lower), "upper": _number(c.upper), "limit": c.limit,
        "e_value": _number(c.e_value), "alpha": c.alpha, "canary_samples": c.canary_samples,
        "baseline_samples": c.baseline_samples, "min_samples": c.min_samples,
    }  # fmt: skip


def _formats(c: admin_pb2.Comparison):
    """(a value, the estimate's scale, its bounds' scale, the samples' unit) for the metric."""
    if c.metric == "error rate":
        return (
            (lambda x: f"{100 * x:.2f}%"),
            (lambda x: f"{100 * x:+.2f} pts"),
            (lambda x: f"{100 * x:+.2f}"),
            "requests",
        )
    if c.metric == "log loss":
        ratio = lambda x: f"x{x:.3f}"  # noqa: E731
        return (lambda x: f"{x:.4f}"), ratio, ratio, "labels"
    shift = lambda x: f"{x:+.4f}"  # noqa: E731
    return (lambda x: f"{x:.4f}"), shift, shift, "labels"


COLOURS = {"breach": "red", "pass": "green", "undecided": "yellow", "waiting": "yellow"}


def comparison_lines(c: admin_pb2.Comparison, canary: str, baseline: str, indent: str = "    ") -> list[str]:
    """Rich markup, each line within 80 columns for short variant names: the verdict and both sides' values, then
    the estimate (canary - baseline, or canary / baseline for log loss) in its bounds, the limit and the e-value."""
    value, shift, bound, unit = _formats(c)
    verdict = f"[{COLOURS.get(c.verdict, 'yellow')}]{c.verdict}[/]"
    canary, baseline = escape(canary), escape(baseline)
    if c.verdict == "waiting":
        return [
            f"{indent}{escape(c.metric)} {verdict}: {c.canary_samples:,} {canary} and {c.baseline_samples:,} "
            f"{baseline} {unit} of {c.min_samples:,} needed"
        ]
    return [
        f"{indent}{escape(c.metric)} {verdict}: {canary} {value(c.canary)}, {baseline} {value(c.baseline)} "
        f"({c.canary_samples:,} / {c.baseline_samples:,} {unit})",
        escape(
            f"{indent}  {shift(c.estimate)} in [{bound(c.lower)}, {bound(c.upper)}] at {100 * (1 - c.alpha):.4g} %, "
            f"limit {shift(c.limit)}, e-value {c.e_value:.3g}"
        ),
    ]
