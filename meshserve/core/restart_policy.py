"""When a supervisor restarts a child that exited without being asked to, and when it gives up on it.

Pure: the clock is injected, so a unit test can pin every decision.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RestartDecision", "RestartPolicy", "describe_exit"]


@dataclass(frozen=True, slots=True)
class RestartDecision:
    restart: bool
    delay_s: float  # how long to wait before starting it again
    crashed: bool  # False: it exited with code 0 (it drained and left cleanly)
    crashes: int  # crashes inside the window, this one included; 0 for a clean exit
    max_crashes: int
    window_s: float


class RestartPolicy:
    """One per child. A crash (any exit but code 0) is restarted after a backoff that doubles with each crash
    inside the sliding window (`backoff_s`, 2x, 4x, ... at most `backoff_max_s`); the crash after `max_crashes`
    of them inside the window means the child keeps crashing, and the decision is to give up.

    A clean exit (code 0) is restarted at once and not counted: our processes exit 0 only after draining on
    SIGTERM/SIGINT, so someone stopped that one process on purpose, and the mesh cannot serve without it. Bouncing
    a process by hand, however often, must not look like a crash loop.
    """

    def __init__(
        self,
        max_crashes: int = 5,
        window_s: float = 60.0,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_crashes < 0 or window_s <= 0 or backoff_s < 0 or backoff_max_s < backoff_s:
            raise ValueError("need max_crashes >= 0, window_s > 0 and 0 <= backoff_s <= backoff_max_s")
        self.max_crashes = max_crashes
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._crashes: deque[float] = deque()  # when each crash inside the window happened

    def on_exit(self, code: int) -> RestartDecision:
        """Decide about an exit the supervisor did not ask for; `code` as asyncio reports it (-N: signal N)."""
        if code == 0:
            return RestartDecision(True, 0.0, False, 0, self.max_crashes, self.window_s)
        now = self.clock()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self.window_s:
            self._crashes.popleft()
        crashes = len(self._crashes)
        if crashes > self.max_crashes:
            return RestartDecision(False, 0.0, True, crashes, self.max_crashes, self.window_s)
        delay = min(self.backoff_s * 2 ** (crashes - 1), self.backoff_max_s)
        return RestartDecision(True, delay, True, crashes, self.max_crashes, self.window_s)


def describe_exit(code: int) -> str:
    """`exit code 1`, `killed by SIGKILL`: how a process ended, for people."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
