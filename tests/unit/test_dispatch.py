"""The dispatcher's policy with a fake clock and scripted attempts: what counts against a variant, the cap on
ejections, panic mode, and recovery."""

from __future__ import annotations

import pytest

from gateway.routing.dispatch import AllTiersFailed, Dispatcher, Tier
from gateway.routing.resilience import RetryBudget, variant_failed
from gateway.routing.routes import parse_routes
from meshserve.core.errors import (
    DeadlineExceeded,
    ErrorCode,
    InvalidArgument,
    MeshError,
    ResourceExhausted,
    Unavailable,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(*variants: str, fallback: tuple[str, ...] = ()):
    spec = {
        "retry": {"max_attempts": 1},
        "fallback": list(fallback),
        "variants": [{"name": v, "model": "m", "version": str(n + 1), "weight": 100 if n == 0 else 0}
                     for n, v in enumerate(variants)],
    }  # fmt: skip
    return parse_routes({"routes": {"r": spec}}, "test").routes["r"]


def failing(exc: Exception, calls: list[str] | None = None):
    async def attempt(variant, time_left):
        if calls is not None:
            calls.append(variant.name)
        raise exc

    return attempt


async def ok(variant, time_left):
    return variant.name


def test_only_the_variants_own_failures_count_against_it():
    assert variant_failed(Unavailable("triton is down"))
    assert variant_failed(MeshError("model crashed", ErrorCode.INTERNAL, origin="inference service"))
    assert not variant_failed(DeadlineExceeded("the caller's time ran out"))
    assert not variant_failed(ResourceExhausted("Triton's queue is full"))
    assert not variant_failed(Unavailable("feature service unavailable", origin="feature service"))
    assert not variant_failed(InvalidArgument("bad input"))


@pytest.mark.parametrize(
    "exc",
    [DeadlineExceeded("caller out of time"), Unavailable("no features", origin="feature service"),
     ResourceExhausted("queue full")],
    ids=["deadline", "feature outage", "overload"],
)  # fmt: skip
async def test_failures_that_are_not_the_variants_never_eject_it(exc):
    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    single = route("stable")
    for _ in range(50):
        with pytest.raises(MeshError):
            await dispatcher.run("r", single, single.variants[0], failing(exc), clock() + 5)
    assert not dispatcher.ejection.ejected("r/stable")
    assert dispatcher.stats.totals.get(("r", "stable"), [0, 0])[1] == 0  # and no error counted for the judge
    served = await dispatcher.run("r", single, single.variants[0], ok, clock() + 5)
    assert served.value == "stable" and served.tier is Tier.PRIMARY


async def test_at_most_half_of_a_routes_variants_are_ejected_and_the_rest_keep_serving():
    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    pair = route("stable", "canary")
    for name in ("canary", "stable"):
        for _ in range(5):
            with pytest.raises(AllTiersFailed):
                await dispatcher.run("r", pair, pair.variant(name), failing(Unavailable("down")), clock() + 5)
    assert dispatcher.ejection.ejected("r/canary")
    assert not dispatcher.ejection.ejected("r/stable")  # the cap: it stays in, although it failed as often


async def test_when_every_tier_is_ejected_they_are_tried_anyway_and_a_success_restores_at_once():
    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    single = route("stable")
    for _ in range(5):
        with pytest.raises(AllTiersFailed):
            await dispatcher.run("r", single, single.variants[0], failing(Unavailable("down")), clock() + 5)
    assert dispatcher.ejection.ejected("r/stable")
    calls: list[str] = []
    with pytest.raises(AllTiersFailed):
        await dispatcher.run(
            "r", single, single.variants[0], failing(Unavailable("down"), calls), clock() + 5
        )
    assert calls == ["stable"] and dispatcher.panics == 1  # panic: the ejected only tier was still tried
    served = await dispatcher.run("r", single, single.variants[0], ok, clock() + 5)
    assert served.value == "stable" and not dispatcher.ejection.ejected("r/stable")


async def test_an_ejected_canary_is_skipped_for_its_fallback_while_the_fallback_is_healthy():
    clock = Clock()
    dispatcher = Dispatcher(clock=clock)
    pair = route("stable", "canary", fallback=("stable",))
    for _ in range(5):
        await dispatcher.run("r", pair, pair.variant("canary"), failing_then(Unavailable("down"), "canary"),
                             clock() + 5)  # fmt: skip
    assert dispatcher.ejection.ejected("r/canary")
    calls: list[str] = []

    async def record(variant, time_left):
        calls.append(variant.name)
        return variant.name

    served = await dispatcher.run("r", pair, pair.variant("canary"), record, clock() + 5)
    assert calls == ["stable"] and served.tier is Tier.FALLBACK and dispatcher.panics == 0
    clock.now += 1.01  # the ejection ran out: one probe goes to the canary, and its success restores it
    served = await dispatcher.run("r", pair, pair.variant("canary"), record, clock() + 5)
    assert served.value == "canary" and not dispatcher.ejection.ejected("r/canary")


def failing_then(exc: Exception, bad: str):
    async def attempt(variant, time_left):
        if variant.name == bad:
            raise exc
        return variant.name

    return attempt


def test_retry_budget_memory_is_fixed_whatever_the_rate():
    clock = Clock()
    budget = RetryBudget(ratio=0.1, window_s=10, clock=clock)
    for n in range(200_000):
        clock.now += 0.001  # 1,000 requests a second for 200 s
        budget.record_request()
        if n % 100 == 0:
            budget.try_acquire()
    assert budget.buckets <= 11
