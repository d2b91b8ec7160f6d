"""What a call carries across hops: the request id (gRPC metadata `x-request-id`) and the caller's headers, read
once per call into context variables; and who the caller is (its Principal, set where the call is adopted once
it is authenticated), so handlers authorize without any gRPC import."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from types import MappingProxyType

from meshserve.core.auth import ANONYMOUS, Principal
from meshserve.core.telemetry import annotate

REQUEST_ID_HEADER = "x-request-id"
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_request_id: ContextVar[str | None] = ContextVar("meshserve_request_id", default=None)
_headers: ContextVar[Mapping[str, str]] = ContextVar("meshserve_call_headers", default=_NO_HEADERS)
_principal: ContextVar[Principal] = ContextVar("meshserve_principal", default=ANONYMOUS)
_peer: ContextVar[str] = ContextVar("meshserve_peer", default="")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> str:
    """Adopt the caller's id, or mint one; returns the id now in force."""
    request_id = value or os.urandom(16).hex()
    _request_id.set(request_id)
    return request_id


def adopt_call(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """Read an incoming call's metadata once: its text headers (for `call_headers`) and its request id."""
    headers = {key: value for key, value in metadata or () if isinstance(value, str)}
    _headers.set(headers)
    _principal.set(ANONYMOUS)  # until this call's own credential says otherwise
    request_id = set_request_id(headers.get(REQUEST_ID_HEADER))
    annotate(request_id=request_id)
    return request_id


def call_headers() -> Mapping[str, str]:
    """The text metadata of the call being handled (binary `-bin` values left out)."""
    return _headers.get()


def current_principal() -> Principal:
    """Who makes the call being handled (ANONYMOUS until authenticated, or where authentication is off)."""
    return _principal.get()


def set_principal(principal: Principal) -> None:
    _principal.set(principal)


def current_peer() -> str:
    """The caller's address as the transport gave it ("ipv4:127.0.0.1:5123"), where the call's guard noted it."""
    return _peer.get()


def set_peer(peer: str) -> None:
    _peer.set(peer)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for a call this one makes downstream: the request id travels on."""
    request_id = _request_id.get()
    return () if request_id is None else ((REQUEST_ID_HEADER, request_id),)


# Each hop keeps back a little of the caller's remaining time: for its answer to travel back, and because gRPC
# rounds a transmitted deadline up (a server can see a few milliseconds more than its caller has left).
HOP_MARGIN_S = 0.01


def budget_left(time_remaining: float | None) -> float | None:
    """What a hop may pass on downstream of the time its caller gave it (None: the caller set no deadline)."""
    return None if time_remaining is None else time_remaining - HOP_MARGIN_S
