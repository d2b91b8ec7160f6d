"""Whether a request that failed on one Triton replica may go to another: pure policy, no I/O.

Only a failure that says the request never ran is retried: UNAVAILABLE is gRPC's status for a call the server did
not process (connection refused or reset, a Triton shutting down, a full queue). DEADLINE_EXCEEDED is not (the
time is spent, and the model may be running it), nor any error from the model or about the request (INTERNAL,
INVALID_ARGUMENT...: another replica would answer the same), nor UNKNOWN (what failed is not known). Once, on
another replica, within what is left of the caller's deadline.
"""

from __future__ import annotations

__all__ = ["MIN_RETRY_S", "RETRY_SAFE", "retry_on_another"]

RETRY_SAFE = frozenset({"UNAVAILABLE"})
MIN_RETRY_S = 0.001  # less time left than this: a retry could only end in DEADLINE_EXCEEDED


def retry_on_another(code: str, attempts: int, others: int, time_left_s: float | None) -> bool:
    """Send again to another replica? `code` is the failed attempt's gRPC status name, `attempts` how many were
    made, `others` how many other replicas could take it, `time_left_s` what is left of the caller's deadline
    (None: no deadline)."""
    if code not in RETRY_SAFE or attempts >= 2 or others < 1:
        return False
    return time_left_s is None or time_left_s >= MIN_RETRY_S
