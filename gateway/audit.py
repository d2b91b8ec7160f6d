"""The audit log: every change to live routes, appended as one JSON line to a file that outlives the process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: str
    who: str
    action: str
    route: str
    before: object
    after: object
    reason: str = ""


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(
        self, who: str, action: str, route: str, before: object, after: object, reason: str = ""
    ) -> AuditEntry:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        entry = AuditEntry(stamp, who, action, route, before, after, reason)
        with self.path.open("a") as f:  # one small write per change: rare, and must survive a crash
            f.write(json.dumps(asdict(entry), sort_keys=True) + "\n")
        return entry

    def tail(self, limit: int) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()[-limit:]
        return [AuditEntry(**json.loads(line)) for line in lines if line.strip()]
