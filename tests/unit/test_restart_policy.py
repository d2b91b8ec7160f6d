"""RestartPolicy decides alone, on an injected clock; Supervisor applies it to real (trivial) processes."""

from __future__ import annotations

import asyncio
import signal

import pytest

from meshserve.core.process import ChildProcess
from meshserve.core.restart_policy import RestartPolicy, describe_exit
from meshserve.core.supervision import ChildExited, ChildRecovered, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_crashes_are_restarted_with_doubling_backoff_up_to_the_cap():
    policy = RestartPolicy(max_crashes=10, window_s=60, backoff_s=0.5, backoff_max_s=3, clock=Clock())
    delays = [policy.on_exit(-9).delay_s for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_one_crash_more_than_allowed_within_the_window_gives_up():
    clock = Clock()
    policy = RestartPolicy(max_crashes=2, window_s=60, clock=clock)
    first, second = policy.on_exit(1), policy.on_exit(-9)
    assert first.restart and second.restart and (first.crashes, second.crashes) == (1, 2)
    clock.now += 59
    third = policy.on_exit(1)
    assert not third.restart and third.crashed and third.crashes == 3


def test_crashes_older_than_the_window_are_forgotten_and_the_backoff_starts_over():
    clock = Clock()
    policy = RestartPolicy(max_crashes=2, window_s=60, backoff_s=0.5, clock=clock)
    policy.on_exit(1)
    policy.on_exit(1)
    clock.now += 60  # both crashes are now exactly a window old
    decision = policy.on_exit(1)
    assert decision.restart and decision.crashes == 1 and decision.delay_s == 0.5


def test_a_clean_exit_is_restarted_at_once_and_never_counted_as_a_crash():
    policy = RestartPolicy(max_crashes=1, window_s=60, clock=Clock())
    for _ in range(10):  # e.g. an operator bouncing the gateway with SIGTERM
        decision = policy.on_exit(0)
        assert decision.restart and not decision.crashed and decision.delay_s == 0 and decision.crashes == 0
    assert policy.on_exit(1).restart  # the first real crash is still the first
    assert not policy.on_exit(1).restart


def test_zero_crashes_allowed_gives_up_on_the_first():
    assert not RestartPolicy(max_crashes=0, clock=Clock()).on_exit(-15).restart


@pytest.mark.parametrize(
    ("max_crashes", "window_s", "backoff_s", "backoff_max_s"), [(-1, 60, 1, 2), (1, 0, 1, 2), (1, 60, 3, 2)]
)
def test_nonsense_settings_are_refused(max_crashes, window_s, backoff_s, backoff_max_s):
    with pytest.raises(ValueError):
        RestartPolicy(max_crashes, window_s, backoff_s, backoff_max_s)


def test_exits_are_described_for_people():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-200) == "killed by signal 200"


def _child(tmp_path, name: str, script: str) -> ChildProcess:
    return ChildProcess(name, ["/bin/sh", "-c", script], {}, tmp_path / f"{name}.log")


async def test_supervisor_restarts_a_crashing_child_then_gives_up_and_ignores_requested_stops(tmp_path):
    crasher = _child(tmp_path, "crasher", "echo '[/meshserve] not markup'; exit 3")
    steady = _child(tmp_path, "steady", "exec sleep 30")
    for child in (crasher, steady):
        await child.start()
    events = []

    async def healthy(name: str) -> None:
        return None

    supervisor = Supervisor(
        {"crasher": crasher, "steady": steady},
        lambda: RestartPolicy(max_crashes=2, window_s=60, backoff_s=0.01, backoff_max_s=0.02),
        healthy,
        events.append,
    )
    supervisor.start()
    try:
        gave_up = await asyncio.wait_for(supervisor.wait(), 10)
        assert gave_up.name == "crasher" and gave_up.code == 3 and not gave_up.decision.restart
        assert crasher.starts == 3  # the first start and two restarts
        exits = [e for e in events if isinstance(e, ChildExited)]
        assert [e.decision.restart for e in exits] == [True, True, False]
        assert "[/meshserve] not markup" in exits[-1].log_tail
        assert "crashed (exit code 3); restart 1 of 2 within 60s" in exits[0].summary()
        assert "giving up" in exits[-1].summary()
        assert {e.name for e in events if isinstance(e, ChildRecovered)} == {"crasher"}
    finally:
        await supervisor.stop()
        await steady.stop(2)
    assert steady.starts == 1  # a requested stop is not an exit to act on
    assert not any(e.name == "steady" for e in events)


async def test_supervisor_restarts_a_clean_exit_and_reports_it_as_an_exit(tmp_path):
    marker = tmp_path / "ran-once"
    # exits 0 the first time only, then stays up
    child = _child(tmp_path, "bouncer", f"if [ -e {marker} ]; then exec sleep 30; fi; touch {marker}; exit 0")
    await child.start()
    events: list = []
    recovered = asyncio.Event()

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, ChildRecovered):
            recovered.set()

    async def healthy(name: str) -> None:
        return None

    supervisor = Supervisor({"bouncer": child}, lambda: RestartPolicy(max_crashes=0), healthy, on_event)
    supervisor.start()
    try:
        await asyncio.wait_for(recovered.wait(), 10)
        (exited,) = [e for e in events if isinstance(e, ChildExited)]
        assert exited.code == 0 and not exited.decision.crashed and exited.decision.restart
        assert "exited cleanly (exit code 0) without being asked to; restarting it" in exited.summary()
        assert child.starts == 2 and not child.exited
    finally:
        await supervisor.stop()
        await child.stop(2)
