"""Domain errors with a transport-neutral code; one interceptor turns them into gRPC status codes."""

from __future__ import annotations

from enum import Enum

__all__ = [
    "DeadlineExceeded",
    "ErrorCode",
    "FailedPrecondition",
    "InvalidArgument",
    "MeshError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class ErrorCode(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNIMPLEMENTED = "unimplemented"
    UNAUTHENTICATED = "unauthenticated"  # no credential, or one that does not verify
    PERMISSION_DENIED = "permission_denied"  # a known caller without the right to this call
    INTERNAL = "internal"


class MeshError(Exception):
    """An error meant for the caller: its message is safe to show and names what was wrong.

    `origin` names the dependency whose failure this is ("feature service", ...), when it is one: the gateway
    holds a model variant responsible only for failures of its own path. `metadata` is sent to the caller as
    trailing metadata (e.g. a retry-after hint).
    """

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        code: ErrorCode | None = None,
        *,
        origin: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.origin = origin
        self.metadata = metadata


class InvalidArgument(MeshError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(MeshError):
    code = ErrorCode.NOT_FOUND


class ResourceExhausted(MeshError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MeshError):
    code = ErrorCode.FAILED_PRECONDITION


class Unavailable(MeshError):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(MeshError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Unauthenticated(MeshError):
    """The caller is not known: the message says what was wrong with its credential, never the credential."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(MeshError):
    """The caller is known but may not do this: the message names what is missing."""

    code = ErrorCode.PERMISSION_DENIED
