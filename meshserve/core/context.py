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
