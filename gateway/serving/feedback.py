"""Labels sent to the gateway (meshserve.feedback.v1 over gRPC, or POST /v1/feedback), passed on to the monitor
service, which stores them and joins them to the prediction log. No gRPC here.

Where authentication is on, a caller needs role `feedback` (or `admin`); every call is counted for the audit log
in bulk (one entry per caller per minute), never per label. A batch over `max_labels` is refused before any work.
"""

from __future__ import annotations

from gateway.control.audit import FeedbackAudit
from gateway.serving.clients import MonitorClient
from meshserve.core.auth import ADMIN_ROLE, Principal
from meshserve.core.context import current_principal
from meshserve.core.errors import MeshError, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from meshserve.feedback.v1 import feedback_pb2

__all__ = ["FEEDBACK_ROLE", "MAX_LABELS", "FeedbackHandler"]

FEEDBACK_ROLE = "feedback"
MAX_LABELS = 10_000  # per request (the monitor's max_records_per_request)
NO_MONITOR = "no monitor service configured: the gateway's monitor_url is unset, so labels cannot be stored"


class FeedbackHandler:
    def __init__(
        self,
        monitor: MonitorClient | None,
        audit: FeedbackAudit,
        *,
        auth_required: bool = False,
        max_labels: int = MAX_LABELS,
    ) -> None:
        self.monitor = monitor
        self.audit = audit
        self.auth_required = auth_required  # off: anonymous callers may send labels too
        self.max_labels = max_labels

    def authorize(self) -> Principal:
        """The caller, if it may send labels: role feedback or admin where authentication is on (or wherever the
        caller presented a credential); else Unauthenticated / PermissionDenied, counted for the audit."""
        principal = current_principal()
        if not (self.auth_required or not principal.anonymous):
            return principal
        if principal.roles & {FEEDBACK_ROLE, ADMIN_ROLE}:
            return principal
        self.audit.count(principal.name, denied=1)
        if principal.anonymous:
            raise Unauthenticated(f"sending feedback needs a credential with role {FEEDBACK_ROLE!r}")
        raise PermissionDenied(
            f"principal {principal.name!r} lacks role {FEEDBACK_ROLE!r} (or {ADMIN_ROLE!r}), which sending "
            "feedback needs"
        )

    def check_size(self, labels: int) -> None:
        if labels > self.max_labels:
            raise ResourceExhausted(
                f"{labels} labels in one request; the limit is {self.max_labels}: send them in batches"
            )

    async def send(
        self, request: feedback_pb2.SendFeedbackRequest, time_left_s: float | None = None
    ) -> feedback_pb2.SendFeedbackResponse:
        """Pass the labels on to the monitor; its answer says what it kept, and why it refused any."""
        principal = self.authorize()
        labels = len(request.labels)
        self.check_size(labels)
        if self.monitor is None:
            raise Unavailable(NO_MONITOR)
        try:
            reply = await self.monitor.send_feedback(request, time_left_s)
        except MeshError:
            self.audit.count(principal.name, requests=1, labels=labels, failed=labels)
            raise
        self.audit.count(
            principal.name, requests=1, labels=labels, accepted=reply.accepted, duplicates=reply.duplicates,
            corrected=reply.corrected, pending=reply.pending, refused=len(reply.refused),
        )  # fmt: skip
        return reply
