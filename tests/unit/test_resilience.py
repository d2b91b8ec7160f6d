from gateway.routing.resilience import OutlierEjection, RetryBudget, try_elsewhere
from meshserve.core.errors import ErrorCode, InvalidArgument, MeshError, NotFound, Unavailable


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_only_codes_that_mean_try_elsewhere_trigger_fallback():
    assert try_elsewhere(Unavailable("down"))
    assert try_elsewhere(MeshError("slow", ErrorCode.DEADLINE_EXCEEDED))
    assert try_elsewhere(MeshError("full", ErrorCode.RESOURCE_EXHAUSTED))
    assert not try_elsewhere(InvalidArgument("bad input"))
    assert not try_elsewhere(NotFound("no route"))
    assert not try_elsewhere(RuntimeError("bug"))


def test_retry_budget_caps_retries_at_the_ratio_of_requests():
    clock = Clock()
    budget = RetryBudget(ratio=0.1, window_s=10, min_retries=0, clock=clock)
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_acquire() for _ in range(50))
    assert granted == 10
    clock.now += 10.5  # the window slides past every request
    assert not budget.try_acquire()
    budget.record_request()
    assert not budget.try_acquire()  # 1 request * 0.1 < 1 retry


def test_retry_budget_minimum_lets_a_quiet_route_retry():
    budget = RetryBudget(ratio=0.1, min_retries=3, clock=Clock())
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_variant_is_ejected_after_consecutive_failures_then_probed_back():
    clock = Clock()
    ejection = OutlierEjection(failures=3, base_s=1.0, max_s=8.0, clock=clock)
    for _ in range(2):
        ejection.record("canary", ok=False)
    ejection.record("canary", ok=True)  # success resets the streak
    for _ in range(3):
        assert ejection.available("canary")
        ejection.record("canary", ok=False)
    assert not ejection.available("canary") and ejection.ejected("canary")
    clock.now += 1.01
    assert ejection.available("canary")  # one probe
    assert not ejection.available("canary")  # ...and only one
    ejection.record("canary", ok=False)  # probe failed: ejected for twice as long
    clock.now += 1.5
    assert not ejection.available("canary")
    clock.now += 0.6
    assert ejection.available("canary")
    ejection.record("canary", ok=True)
    assert ejection.available("canary") and not ejection.ejected("canary")


def test_ejection_backoff_is_capped():
    clock = Clock()
    ejection = OutlierEjection(failures=1, base_s=1.0, max_s=4.0, clock=clock)
    for _ in range(6):
        clock.now += 100
        assert ejection.available("v")
        ejection.record("v", ok=False)
    clock.now += 4.01
    assert ejection.available("v")
