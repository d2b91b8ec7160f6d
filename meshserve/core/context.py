"""The request id that travels across hops (gRPC metadata `x-request-id`), kept in a context variable."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"
_request_id: ContextVar[str | None] = ContextVar("meshserve_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> str:
    """Adopt the caller's id, or mint one; returns the id now in force."""
    request_id = value or uuid.uuid4().hex
    _request_id.set(request_id)
    return request_id


# Each hop keeps back a little of the caller's remaining time: for its answer to travel back, and because gRPC
# rounds a transmitted deadline up (a server can see a few milliseconds more than its caller has left).
HOP_MARGIN_S = 0.01


def budget_left(time_remaining: float | None) -> float | None:
    """What a hop may pass on downstream of the time its caller gave it (None: the caller set no deadline)."""
    return None if time_remaining is None else time_remaining - HOP_MARGIN_S
