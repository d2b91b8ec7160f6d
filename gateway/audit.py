"""The audit log: every change to live routes, and every admin request refused, appended as one JSON line to a
file that outlives the process. `who` is the authenticated principal's name; `peer` the caller's address."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from meshserve.core.context import current_peer


@dataclass(frozen=True, slots=True)
class AuditEntry:
    time: str
    who: str
    action: str
    route: str
    before: object
    after: object
    reason: str = ""
    peer: str = ""  # the caller's address, where the change came through the admin API
    method: str = ""  # the RPC refused, for action "denied"


class AuditLog:
    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(
        self,
        who: str,
        action: str,
        route: str,
        before: object,
        after: object,
        reason: str = "",
        *,
        peer: str | None = None,
        method: str = "",
    ) -> AuditEntry:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        peer = current_peer() if peer is None else peer  # the admin call being handled, if any
        entry = AuditEntry(stamp, who, action, route, before, after, reason, peer, method)
        with self.path.open("a") as f:  # one small write per change: rare, and must survive a crash
            f.write(json.dumps(asdict(entry), sort_keys=True) + "\n")
        return entry

    def denied(self, who: str, method: str, reason: str, peer: str) -> AuditEntry:
        """A refused request (UNAUTHENTICATED / PERMISSION_DENIED): who (as far as known), what, why, from where."""
        return self.append(who, "denied", "", None, None, reason, peer=peer, method=method)

    def tail(self, limit: int) -> list[AuditEntry]:
        if not self.path.exists():
            return []
        lines = self.path.read_text().splitlines()[-limit:]
        return [AuditEntry(**json.loads(line)) for line in lines if line.strip()]
