from meshserve.core.logs import Throttle


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_key_per_interval_then_a_count_of_those_held_back():
    clock = Clock()
    throttle = Throttle(interval_s=10.0, clock=clock)
    assert throttle("read:fraud") == 0
    assert [throttle("read:fraud") for _ in range(500)] == [None] * 500
    assert throttle("read:other") == 0  # keys are throttled apart
    clock.now = 10.0
    assert throttle("read:fraud") == 500
    assert throttle("read:fraud") is None
