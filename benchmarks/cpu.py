"""CPU time per process over a measured window, from /proc: far steadier on a shared machine than requests per
second. Each name may stand for several processes (Triton and the python backend stubs it starts)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from meshserve.core.process import descendants

__all__ = ["CpuMeter", "cpu_seconds", "descendants"]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class CpuMeter:
    """`start()` then `stop()` around a window; `stop` returns CPU seconds per name. `groups` maps a name to a
    function giving its pids now (resolved at start, so a process started later is not counted)."""

    def __init__(self, groups: Mapping[str, Callable[[], set[int]]]) -> None:
        self.groups = groups
        self._pids: dict[str, set[int]] = {}
        self._start: dict[str, float] = {}

    def start(self) -> None:
        self._pids = {name: pids() for name, pids in self.groups.items()}
        self._start = {name: sum(map(cpu_seconds, pids)) for name, pids in self._pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: sum(map(cpu_seconds, pids)) - self._start[name] for name, pids in self._pids.items()}
