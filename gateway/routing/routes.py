"""Routes: what clients call (a route name) and which Triton model versions answer, declared in YAML.

Everything here is pure: a variant is chosen from the route, a sticky key (hashed into buckets) or an RNG the
caller injects, so splits are unit-testable to the request.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from collections.abc import Iterable
from enum import StrEnum
from functools import cached_property
from itertools import accumulate
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from meshserve.core.auth import AccessRule
from meshserve.core.errors import InvalidArgument, NotFound
from meshserve.defaults import load_yaml

__all__ = [
    "BUCKETS",
    "LISTED_ROUTES",
    "CachePolicy",
    "DefaultAnswer",
    "Fault",
    "Quality",
    "QualityTask",
    "RetryPolicy",
    "Route",
    "RouteAuth",
    "RouteTable",
    "Rollout",
    "RolloutQuality",
    "RoutesFileError",
    "Shadow",
    "Sticky",
    "Variant",
    "bucket_of",
    "choose_variant",
    "load_routes",
    "pass_through",
    "unknown_model",
    "unknown_route",
]

BUCKETS = 10_000  # sticky resolution: 0.01 % of traffic per bucket


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    name: str = Field(min_length=1)
    model: str = Field(min_length=1)  # the Triton model
    version: str = ""  # "" = the highest version Triton serves
    weight: float = Field(ge=0)


class CachePolicy(_Strict):
    enabled: bool = True
    ttl_s: float = Field(30.0, gt=0)
    max_entry_bytes: int = Field(1024, gt=0)  # answers larger than this are not cached
    cache_fallbacks: bool = False  # also cache answers from fallback tiers (never errors or default answers)


class FeatureAction(StrEnum):
    DEFAULT = "default"  # use the registry's default value (reject if it has none)
    REJECT = "reject"  # FAILED_PRECONDITION naming the feature, the entity and why
    FALLBACK = (
        "fallback"  # treat as a failure of the tier: the fallback chain, then the route's default answer
    )


class FeaturePolicy(_Strict):
    """What a Predict does with a stored feature that is missing, or older than its max age."""

    on_missing: FeatureAction = FeatureAction.DEFAULT
    on_stale: FeatureAction = FeatureAction.DEFAULT


class StickyKey(StrEnum):
    NONE = "none"  # random per request
    ENTITY = "entity"  # Predict's entity key
    HEADER = "header"  # a request metadata header


class Sticky(_Strict):
    key: StickyKey = StickyKey.NONE
    header: str | None = None  # for key: header (lower-case gRPC metadata key)

    @model_validator(mode="after")
    def _header_named(self) -> Sticky:
        if self.key is StickyKey.HEADER and not self.header:
            raise ValueError("sticky key 'header' needs the header name in `header`")
        return self


class RetryPolicy(_Strict):
    max_attempts: int = Field(2, ge=1, le=5)  # per tier, the first attempt included
    budget_ratio: float = Field(0.1, ge=0, le=1)  # retries at most this fraction of requests


class DefaultAnswer(_Strict):
    score: float  # returned, marked as the default tier, when every tier failed


class Fault(_Strict):
    """Fault injection for testing: delay and/or abort a share of one variant's calls."""

    variant: str
    delay_ms: int = Field(0, ge=0)
    delay_percent: float = Field(0, ge=0, le=100)
    abort_percent: float = Field(0, ge=0, le=100)
    abort_code: str = Field(
        "UNAVAILABLE", pattern="^(UNAVAILABLE|RESOURCE_EXHAUSTED|INTERNAL|DEADLINE_EXCEEDED)$"
    )


class Shadow(_Strict):
    """Mirror a share of requests to a variant after the caller has its answer, and compare the two."""

    variant: str
    percent: float = Field(gt=0, le=100)
    label_threshold: float = Field(0.5, description="scores at or above it count as a positive label")


class RolloutQuality(_Strict):
    """A rollout's quality criteria, judged on labelled predictions (the monitor service joins labels to the
    prediction log): each step must show, with an anytime-valid test, that the canary is within every limit before
    it steps up. Labels arrive late, so a step waits for them, at most `max_wait_s`; a step that could not be judged
    by then is rolled back (its reason says so): a plan promises an answer within its waits, and an unproven canary
    goes back to the stable rather than keep its share unjudged."""

    min_labels: int = Field(200, ge=1)  # labelled predictions per side in a step's window before it is judged
    max_wait_s: float = Field(4 * 3600.0, gt=0)  # longest a step waits to be judged; then rolled back
    alpha: float = Field(
        0.05, gt=0, lt=1
    )  # false-rollback rate of the whole rollout: every criterion and step
    max_auc_decrease: float | None = Field(None, ge=0, lt=1)  # canary AUC at least baseline AUC - this
    max_log_loss_ratio: float | None = Field(None, gt=0)  # canary log loss at most this times the baseline's

    @model_validator(mode="after")
    def _a_criterion(self) -> RolloutQuality:
        if self.max_auc_decrease is None and self.max_log_loss_ratio is None:
            raise ValueError("quality criteria need max_auc_decrease or max_log_loss_ratio (or both)")
        return self

    @property
    def criteria(self) -> list[tuple[str, float]]:
        """(metric, limit) as the monitor's Compare names them, in a fixed order."""
        named = (("auc", self.max_auc_decrease), ("log_loss", self.max_log_loss_ratio))
        return [(metric, limit) for metric, limit in named if limit is not None]


class QualityTask(StrEnum):
    BINARY = "binary"  # the score is the probability of the positive class; labels are 0 or 1
    REGRESSION = "regression"  # the score is a number; labels are any finite number


class Quality(_Strict):
    """The route's answers go to the prediction log (`gateway.serving.prediction_log`), to be joined with labels
    that arrive later: which output is the score, and how to judge it."""

    enabled: bool = True
    task: QualityTask = QualityTask.BINARY
    output: str = Field("score", min_length=1, description="the output tensor holding the score (ModelInfer)")
    index: int = Field(0, ge=0, description="the score's column in that output, per row")
    threshold: float = Field(0.5, allow_inf_nan=False, description="decision threshold (binary)")
    sample_features: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of predictions (by a hash of their id) logged with the model's inputs",
    )

    @model_validator(mode="after")
    def _threshold_is_a_probability(self) -> Quality:
        if self.task is QualityTask.BINARY and not 0 <= self.threshold <= 1:
            raise ValueError(f"a binary route's threshold is a probability in [0, 1], got {self.threshold}")
        return self


class Rollout(_Strict):
    """An automated canary: step the canary's weight up while it is as healthy as the baseline, else roll back."""

    canary: str
    steps: list[float] = Field(min_length=1)  # canary weights in percent, e.g. [5, 25, 50, 100]
    interval_s: float = Field(30.0, gt=0)  # time at each step before judging it
    min_requests: int = Field(20, ge=1)  # requests needed on each side of a window to judge it
    max_error_rate_increase: float = Field(0.02, ge=0)  # canary error rate - baseline error rate
    max_p99_ratio: float = Field(2.0, gt=0)  # canary p99 / baseline p99
    quality: RolloutQuality | None = None  # absent: judged on errors and p99 alone
    require_shadow: str | None = None  # a shadow of the route that must pass on quality before the first step

    @model_validator(mode="after")
    def _steps_increase(self) -> Rollout:
        if (
            any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False))
            or not 0 < self.steps[-1] <= 100
        ):
            raise ValueError("steps must increase, within (0, 100]")
        if self.quality is not None and self.quality.max_wait_s < self.interval_s:
            raise ValueError(
                f"quality.max_wait_s ({self.quality.max_wait_s:g}) must be at least interval_s "
                f"({self.interval_s:g}): no step could step up before its wait ran out"
            )
        if self.require_shadow is not None and self.quality is None:
            raise ValueError("require_shadow needs quality criteria to judge the shadow on")
        return self


class RouteAuth(_Strict):
    """Who may call a route: a caller holding any of `roles`, or named in `principals`. Both empty: any
    authenticated caller (anyone, where the gateway does not require authentication)."""

    roles: list[str] = Field(default_factory=list)
    principals: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> RouteAuth:
        for name in [*self.roles, *self.principals]:
            if not name.strip():
                raise ValueError("role and principal names must not be empty")
        return self

    @cached_property
    def rule(self) -> AccessRule:
        return AccessRule(frozenset(self.roles), frozenset(self.principals))


class Route(_Strict):
    variants: list[Variant] = Field(min_length=1)
    timeout_ms: int = Field(1000, gt=0)
    sticky: Sticky = Sticky()
    override_header: str | None = "x-meshserve-variant"  # a request header naming a variant forces it
    fallback: list[str] = Field(
        default_factory=list
    )  # variant names tried, in order, after the chosen one fails
    default: DefaultAnswer | None = None
    retry: RetryPolicy = RetryPolicy()
    cache: CachePolicy = CachePolicy()
    features: FeaturePolicy = FeaturePolicy()
    faults: list[Fault] = Field(default_factory=list)
    shadows: list[Shadow] = Field(default_factory=list)
    rollout: Rollout | None = None
    auth: RouteAuth | None = None  # who may call it; absent: any authenticated caller
    quality: Quality | None = None  # answers logged for quality (labels joined later); absent: none

    @model_validator(mode="after")
    def _consistent(self) -> Route:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError("at least one variant needs a positive weight")
        named = [*self.fallback, *(f.variant for f in self.faults), *(s.variant for s in self.shadows)]
        if self.rollout is not None:
            named.append(self.rollout.canary)
            if self.rollout.canary == self.variants[0].name:
                raise ValueError("the rollout's canary cannot be the baseline (first) variant")
            shadows = [s.variant for s in self.shadows]
            if self.rollout.require_shadow is not None and self.rollout.require_shadow not in shadows:
                raise ValueError(
                    f"rollout.require_shadow names {self.rollout.require_shadow!r}, which is not a shadow of "
                    f"this route; shadows: {shadows}"
                )
        for name in named:
            if name not in names:
                raise ValueError(f"names unknown variant {name!r}; variants: {names}")
        return self

    @property
    def logged(self) -> Quality | None:
        """The quality block when the route's answers are logged, else None."""
        return self.quality if self.quality is not None and self.quality.enabled else None

    @property
    def baseline(self) -> Variant:
        """The first variant: where a rollback sends all traffic."""
        return self.variants[0]

    def with_weights(self, weights: dict[str, float]) -> Route:
        """A copy with some variants' weights changed (validated like a routes file)."""
        for name in weights:
            self.variant(name)
        variants = [v.model_copy(update={"weight": weights.get(v.name, v.weight)}) for v in self.variants]
        return Route.model_validate({**self.model_dump(), "variants": [v.model_dump() for v in variants]})

    @cached_property
    def primary(self) -> Variant:
        """The variant with the most weight: it answers metadata questions for the route."""
        return max(self.variants, key=lambda v: v.weight)

    @cached_property
    def cumulative_weights(self) -> list[float]:
        """Each variant's end on the weight line, in declaration order (computed once per route table)."""
        return list(accumulate(v.weight for v in self.variants))

    @cached_property
    def tier_chains(self) -> dict[str, list[Variant]]:
        """For each variant: it, then the fallback chain without repeats."""
        chains = {}
        for first in self.variants:
            chain = [first]
            for name in self.fallback:
                variant = self.variant(name)
                if variant not in chain:
                    chain.append(variant)
            chains[first.name] = chain
        return chains

    def model_copy(self, *, update: dict | None = None, deep: bool = False) -> Route:
        """A validated copy (so the values computed once per route are computed again for the copy)."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return Route.model_validate({**fields, **(update or {})})

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise InvalidArgument(f"no variant {name!r}; variants: {[v.name for v in self.variants]}")

    def tiers(self, first: Variant) -> list[Variant]:
        """The chosen variant, then the fallback chain without repeats."""
        return self.tier_chains[first.name]


class RouteTable(_Strict):
    routes: dict[str, Route] = Field(default_factory=dict)  # none: every model Triton serves, under its name
    default_auth: RouteAuth | None = None  # who may call the models served under their own name

    def access_rule(self, name: str) -> AccessRule | None:
        """The rule for calls to `name`: the declared route's own, else (an implicit route) the table's default."""
        route = self.routes.get(name)
        auth = self.default_auth if route is None else route.auth
        return None if auth is None else auth.rule

    def get(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            raise unknown_route(name, self.routes)
        return route


def unknown_model(name: str) -> NotFound:
    """Triton's words for a name nobody serves (the Open Inference Protocol, where clients written for Triton
    expect them); the other names are nobody else's business."""
    return NotFound(f"Request for unknown model: {name!r} is not found")


LISTED_ROUTES = 10  # an unknown route's error lists the known ones when there are at most this many


def unknown_route(name: str, known: Iterable[str]) -> NotFound:
    """meshserve's words (Predict, the admin API) for a name no route has: the routes there are, when few."""
    names = sorted(known)
    if not names:
        return NotFound(f"unknown route {name!r}; no routes are served")
    if len(names) > LISTED_ROUTES:
        return NotFound(f"unknown route {name!r} ({len(names)} routes are served)")
    return NotFound(f"unknown route {name!r}; routes: {', '.join(names)}")


PASS_THROUGH_TIMEOUT_MS = (
    3_600_000  # Triton sets no timeout of its own; the gateway's max_deadline_s still caps it
)


def pass_through(model: str) -> Route:
    """The implicit route for a model Triton serves and no routes file names: its own name, every version
    Triton serves (a requested version goes to Triton as asked), nothing cached, no fallback, and no timeout
    shorter than the gateway's ceiling."""
    return Route(
        variants=[Variant(name="triton", model=model, weight=100)],
        cache=CachePolicy(enabled=False),
        timeout_ms=PASS_THROUGH_TIMEOUT_MS,
    )


def bucket_of(key: str) -> int:
    """A stable bucket in [0, BUCKETS) for a sticky key: the same key lands in the same bucket in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % BUCKETS


def choose_variant(
    route: Route,
    rng: random.Random,
    *,
    version: str = "",
    sticky_key: str | None = None,
    forced: str | None = None,
) -> Variant:
    """Pick the variant that serves one request.

    A forced variant (override header) or a requested model version wins: the variant pinned to that version,
    else the route's variant that follows Triton's versions (version "": the requested one goes to Triton as it
    is). Otherwise the point on the weight line comes from the sticky key's bucket, or from the RNG. Variants take
    consecutive ranges in declaration order, so when weight moves from the first variants to the last (a canary
    ramp), a sticky key only ever moves towards the canary, never back.
    """
    if forced:
        return route.variant(forced)
    if version:
        following = None
        for variant in route.variants:
            if variant.version == version:
                return variant
            if not variant.version and following is None:
                following = variant
        if following is not None:
            return following
        served = [v.version for v in route.variants]
        raise NotFound(f"no variant of this route serves version {version!r}; versions: {served}")
    if len(route.variants) == 1:
        return route.variants[0]
    cumulative = route.cumulative_weights
    unit = (bucket_of(sticky_key) + 0.5) / BUCKETS if sticky_key is not None else rng.random()
    return route.variants[min(bisect_right(cumulative, unit * cumulative[-1]), len(route.variants) - 1)]


class RoutesFileError(ValueError):
    """A routes file that cannot be served; the message names the field path and the reason."""


def parse_routes(data: object, source: str) -> RouteTable:
    try:
        return RouteTable.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or '<top>'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise RoutesFileError(f"{source}: " + "; ".join(problems)) from None


def load_routes(path: Path | None = None) -> RouteTable:
    """The one place a routes file is read (the gateway, `up`'s start-up checks, a reload): every problem is
    one line, `routes file X: ...`."""
    source = f"routes file {path or 'embedded routes.yaml'}"
    try:
        data = load_yaml(path, "routes.yaml")
    except yaml.YAMLError as exc:
        raise RoutesFileError(f"{source}: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError as exc:
        raise RoutesFileError(f"{source}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise RoutesFileError(f"{source}: {exc}") from None
    return parse_routes(data, source)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The parser's problem and where, in one line (its own message spans several, with a caret drawing)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1} column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())
