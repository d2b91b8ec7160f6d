"""Admission control with a fake clock: refusals at the limit, a limit that follows latency, deadline checks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.routing.admission import RETRY_PUSHBACK_HEADER, Admission, AdmissionPolicy, GradientLimit
from meshserve.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def warm(admission: Admission, clock: Clock, route: str, latency_s: float, count: int = 30) -> None:
    """`count` requests one after another, each taking `latency_s`, so the route's latency is known."""
    for _ in range(count):
        with admission.admit(route, None):
            clock.now += latency_s


def windows(limit: GradientLimit, latencies, in_flight=None, start: float = 0.0) -> float:
    """Feed one full window (10 completions over 0.11 s) per latency; returns the time reached."""
    now = start
    for latency in latencies:
        for _ in range(10):
            now += 0.011
            limit.observe(latency, int(limit.limit) if in_flight is None else in_flight, now)
    return now


def test_work_over_the_limit_is_refused_at_once_with_a_retry_hint_and_admitted_again_after():
    clock = Clock()
    admission = Admission(AdmissionPolicy(initial=2, minimum=1), clock=clock)
    warm(admission, clock, "r", 0.004)
    first, second = admission.admit("r", None), admission.admit("r", None)
    with pytest.raises(ResourceExhausted, match="'r' is at its concurrency limit") as refused:
        admission.admit("r", None)
    assert dict(refused.value.metadata) == {RETRY_PUSHBACK_HEADER: "4"}
    assert admission.refused[("r", "limit")] == 1
    with first:
        pass
    with admission.admit("r", None), second:  # a place was given back
        pass
    assert admission.in_flight["r"] == 0 and admission.in_flight_total == 0


def test_the_limit_grows_while_latency_holds_and_shrinks_when_work_queues():
    policy = AdmissionPolicy(initial=20, minimum=4, maximum=500)
    limit = GradientLimit(policy)
    now = windows(limit, [0.010] * 60)  # fully used, steady latency
    grown = limit.limit
    assert grown > 60
    now = windows(limit, [0.060] * 4, start=now)  # work starts queueing: latency jumps sixfold
    assert limit.limit < grown / 2
    windows(limit, [0.2 * 1.2**step for step in range(60)], start=now)  # a queue that keeps growing
    assert limit.limit == pytest.approx(policy.minimum, abs=0.1)


def test_one_slow_request_moves_nothing():
    limit = GradientLimit(AdmissionPolicy(initial=64))
    now = windows(limit, [0.010] * 5, in_flight=64)
    before = limit.limit
    limit.observe(5.0, 64, now + 0.001)  # in a window that has not closed yet
    assert limit.limit == before


def test_a_limit_that_is_not_used_does_not_grow():
    limit = GradientLimit(AdmissionPolicy(initial=50))
    windows(limit, [0.010] * 50, in_flight=3)
    assert limit.limit == 50


def test_batching_latency_that_holds_steady_does_not_shrink_the_limit():
    limit = GradientLimit(AdmissionPolicy(initial=64))
    windows(limit, [0.020] * 200, in_flight=64)  # 64 in flight at a steady 20 ms: merged batches, not a queue
    assert limit.limit >= 64


def test_a_drained_queue_is_seen_by_its_completion_rate_though_the_last_latencies_were_long():
    limit = GradientLimit(AdmissionPolicy())
    now = 0.0
    for k in range(40):  # a queue of 40 draining at 200 a second: each waited longer than the one before
        now += 0.005
        limit.observe(0.005 * (k + 1) + 0.5, 40 - k, now)
    assert limit.short_s > 0.5  # what the last window saw
    assert limit.expected_s(0) == pytest.approx(0.005)  # what a call arriving now waits


def test_a_deadline_shorter_than_the_routes_latency_is_refused_up_front():
    clock = Clock()
    admission = Admission(clock=clock)
    with admission.admit("r", 0.020):  # nothing known yet: nobody is refused for it
        clock.now += 0.050
    warm(admission, clock, "r", 0.050)
    with pytest.raises(DeadlineExceeded, match="'r' answers in about 50 ms now; the call has 20 ms left"):
        admission.admit("r", 0.020)
    with admission.admit("r", 0.5):
        pass
    assert admission.refused[("r", "deadline")] == 1


def test_only_work_that_ran_its_course_feeds_the_latency():
    clock = Clock()
    admission = Admission(clock=clock)
    warm(admission, clock, "r", 0.010)
    for exc in (InvalidArgument("bad"), asyncio.CancelledError()):
        for _ in range(5):
            ticket = admission.admit("r", None)
            clock.now += 3.0
            with pytest.raises(type(exc)), ticket:
                raise exc
    warm(admission, clock, "r", 0.010, count=12)
    assert admission.limits["r"].short_s == pytest.approx(0.010)  # the slow refusals did not count
    for _ in range(10):
        ticket = admission.admit("r", None)
        clock.now += 1.0
        with pytest.raises(DeadlineExceeded), ticket:
            raise DeadlineExceeded("out of time")  # ran out of time here: that is latency worth knowing
    assert admission.limits["r"].short_s > 0.2


def test_the_gateway_total_bounds_every_route_together():
    clock = Clock()
    admission = Admission(AdmissionPolicy(initial=10, total=3), clock=clock)
    tickets = [admission.admit(route, None) for route in ("a", "b", "c")]
    with pytest.raises(ResourceExhausted, match="gateway 3 of 3"):
        admission.admit("d", None)
    for ticket in tickets:
        with ticket:
            pass


def feed(limit: GradientLimit, latency_s: float, rate: float, count: int, start: float) -> float:
    """`count` completions at `rate` a second, each after `latency_s`; returns the time reached."""
    now = start
    for _ in range(count):
        now += 1 / rate
        limit.observe(latency_s, 1, now)
    return now


def test_work_queued_ahead_refuses_a_deadline_it_would_miss_and_a_drained_queue_admits_again():
    clock = Clock()
    admission = Admission(clock=clock)
    limit = admission.limits["r"] = GradientLimit(admission.policy)
    now = feed(limit, 0.010, 100, 40, 0.0)  # 10 ms of work at 100 a second
    feed(limit, 0.500, 100, 40, now)  # then a queue: answers take 500 ms, still at 100 a second
    queued = [admission.admit("r", None) for _ in range(20)]
    with admission.admit("r", 0.5):  # 20 ahead at 100 a second: about 210 ms, 200 of them queueing
        pass
    with pytest.raises(
        ResourceExhausted, match="20 requests ahead and answers in about 210 ms now"
    ) as refused:
        admission.admit("r", 0.300)  # the queueing counts twice: about 410 ms against 300
    assert 100 <= int(dict(refused.value.metadata)[RETRY_PUSHBACK_HEADER]) <= 115
    for ticket in queued:
        with pytest.raises(asyncio.CancelledError), ticket:  # they leave without completing: no new latency
            raise asyncio.CancelledError
    with admission.admit("r", 0.050):  # nothing ahead now: the 500 ms measured behind the queue locks nothing
        pass
    with pytest.raises(DeadlineExceeded, match="answers in about 10 ms now; the call has 5 ms left"):
        admission.admit("r", 0.005)  # not even an empty queue would answer in time
    assert admission.refused[("r", "queue")] == 1 and admission.refused[("r", "deadline")] == 1
