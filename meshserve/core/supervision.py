"""Keeps child processes running: one that exits without being asked to is started again, with the same argv,
environment and ports (its peers' gRPC channels reconnect by themselves), after its `RestartPolicy`'s backoff,
until one keeps crashing. What happens is reported as events, for `meshserve up` to print.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from meshserve.core.process import ChildProcess
from meshserve.core.restart_policy import RestartDecision, RestartPolicy, describe_exit

__all__ = ["ChildExited", "ChildRecovered", "SupervisionEvent", "Supervisor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChildExited:
    name: str
    code: int
    decision: RestartDecision
    log_tail: str  # the last lines it wrote, as written (not markup, not escaped)

    def summary(self) -> str:
        d = self.decision
        if not d.crashed:
            return f"{self.name} exited cleanly (exit code 0) without being asked to; restarting it"
        what = f"{self.name} crashed ({describe_exit(self.code)})"
        if not d.restart:
            return (
                f"{what}: {d.crashes} crashes within {d.window_s:.0f}s, more than {d.max_crashes}; giving up"
            )
        return f"{what}; restart {d.crashes} of {d.max_crashes} within {d.window_s:.0f}s, in {d.delay_s:.1f}s"


@dataclass(frozen=True, slots=True)
class ChildRecovered:
    name: str
    down_s: float  # from its exit until it answered SERVING again

    def summary(self) -> str:
        return f"{self.name} healthy again, {self.down_s:.1f}s after it exited"


SupervisionEvent = ChildExited | ChildRecovered


class Supervisor:
    """`start()` watches every child, `wait()` returns the exit it gave up on, `stop()` stops watching (call it
    before stopping the children, so their exits are not taken for crashes)."""

    def __init__(
        self,
        children: Mapping[str, ChildProcess],
        make_policy: Callable[[], RestartPolicy],
        until_healthy: Callable[[str], Awaitable[None]],
        on_event: Callable[[SupervisionEvent], None] = lambda event: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = children
        self.make_policy = make_policy
        self.until_healthy = until_healthy  # raises TimeoutError when the child never gets there
        self.on_event = on_event
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._gave_up: asyncio.Future[ChildExited] | None = None

    def start(self) -> None:
        self._gave_up = asyncio.get_running_loop().create_future()
        for name in self.children:
            task = asyncio.create_task(self._watch(name), name=f"supervise-{name}")
            task.add_done_callback(self._watch_ended)
            self._tasks.append(task)

    async def wait(self) -> ChildExited:
        """Until a child keeps crashing (its last exit), or raises what broke supervision itself."""
        assert self._gave_up is not None, "start() first"
        return await asyncio.shield(self._gave_up)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _watch_ended(self, task: asyncio.Task[None]) -> None:
        # a watcher that failed (a restart that could not exec, a broken on_event) must not go unnoticed: the
        # child would no longer be supervised
        if not task.cancelled() and task.exception() is not None and not self._gave_up.done():
            self._gave_up.set_exception(task.exception())

    def _report(self, event: SupervisionEvent) -> None:
        log.info(event.summary())
        self.on_event(event)

    async def _watch(self, name: str) -> None:
        child = self.children[name]
        policy = self.make_policy()
        recovery: asyncio.Task[None] | None = None
        try:
            while True:
                code = await child.wait()
                if recovery is not None:
                    recovery.cancel()
                if child.stop_requested:
                    return
                exited_at = self.clock()
                decision = policy.on_exit(code)
                event = ChildExited(name, code, decision, child.log_tail())
                self._report(event)
                if not decision.restart:
                    if not self._gave_up.done():
                        self._gave_up.set_result(event)
                    return
                await asyncio.sleep(decision.delay_s)
                await child.restart()
                recovery = asyncio.create_task(self._recovered(name, exited_at), name=f"recovery-{name}")
        finally:
            if recovery is not None:
                recovery.cancel()
                await asyncio.gather(recovery, return_exceptions=True)

    async def _recovered(self, name: str, exited_at: float) -> None:
        with contextlib.suppress(TimeoutError):  # still unhealthy: its exit, if it comes, is reported instead
            await self.until_healthy(name)
            self._report(ChildRecovered(name, self.clock() - exited_at))
