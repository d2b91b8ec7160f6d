"""Durations and points in time as CLI options take them: `90s`, `30m`, `1h`, `2d` (or plain seconds), and for a
start either such a duration ago or an ISO 8601 time. Pure: the clock is passed in."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

__all__ = ["describe_duration", "parse_duration", "parse_since"]

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds; ValueError saying what is expected. `1h30m` adds up; a bare number is seconds."""
    compact = text.strip().lower()
    parts = DURATION.findall(compact)
    if not compact or "".join(f"{n}{u}" for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"expected a duration such as 90s, 30m, 1h or 2d, not {text!r}")
    seconds = sum(float(n) * UNITS[u or "s"] for n, u in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"expected a duration such as 90s, 30m, 1h or 2d, not {text!r}")
    return seconds


def parse_since(text: str, now: float) -> float:
    """A start time in Unix seconds: a duration before `now` (`2h`), or an ISO 8601 time (UTC unless it says
    its offset); ValueError saying what is expected."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"expected a duration such as 2h (that long ago) or an ISO 8601 time such as 2026-12-01T09:00Z, "
            f"not {text!r}"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def describe_duration(seconds: float) -> str:
    """`1h`, `30m`, `1d 2h`, `45s`: the largest whole units, for headings and label delays (negative when a label's
    event time is before its prediction's)."""
    if seconds < 0:
        return "-" + describe_duration(-seconds)
    if round(seconds) == 0:
        return "0s"
    parts = []
    rest = round(seconds)
    for unit in ("d", "h", "m", "s"):
        size = int(UNITS[unit])
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return " ".join(parts) or f"{seconds:g}s"
