"""Typed errors: the gRPC status the server answered, with its message.

pyarrow does not expose a Flight call's numeric gRPC status. It raises one exception class per
group of codes (`FlightUnavailableError`, `FlightTimedOutError`, `ArrowKeyError`, ...), and where
a class stands for several codes (`ArrowInvalid` for INVALID_ARGUMENT, FAILED_PRECONDITION,
RESOURCE_EXHAUSTED and OUT_OF_RANGE; `FlightInternalError` for INTERNAL, ABORTED and DATA_LOSS)
Arrow's gRPC transport names the code in a fixed prefix of its own ("gRPC returned precondition
failed error, with message: ...", "Flight returned not found error, ..." in
newer versions). `translate` decides by the exception class first and reads
only that prefix, never the server's message, to tell the codes of one class apart.
"""

from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.flight as fl


class QuiverError(Exception):
    """Any error Quiver reported.

    `code` is the gRPC status name, e.g. "NOT_FOUND"; `message` is the server's message;
    `retryable` says whether the same call may succeed if repeated (puts are retried
    automatically only when they carry an `idempotency_key`).
    """

    code: str = "UNKNOWN"
    retryable: bool = False

    def __init__(self, message: str, *, code: Optional[str] = None, detail: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(QuiverError, ValueError):
    """The request was malformed: a bad name, an unknown option or column, undecodable data."""

    code = "INVALID_ARGUMENT"


class NotFound(QuiverError, KeyError):
    """An unknown target, asset or partition."""

    code = "NOT_FOUND"

    def __str__(self) -> str:
        return self.message


class AlreadyExists(QuiverError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(QuiverError):
    """The request conflicts with what is stored: a mode the target lacks, a partitioning
    or schema that differs from the asset's, a stale version."""

    code = "FAILED_PRECONDITION"


class OutOfRange(QuiverError):
    code = "OUT_OF_RANGE"


class ResourceExhausted(QuiverError):
    """A server limit was reached: concurrent puts, or a message larger than
    `limits.max_message_bytes` (the client's batch byte budget keeps puts under it)."""

    code = "RESOURCE_EXHAUSTED"


class Aborted(QuiverError):
    """The asset changed while it was being read; retrying is safe."""

    code = "ABORTED"
    retryable = True


class Unavailable(QuiverError, ConnectionError):
    """The server could not be reached, or the storage behind a target failed."""

    code = "UNAVAILABLE"
    retryable = True


class DeadlineExceeded(QuiverError, TimeoutError):
    """The call's deadline (the client's `timeout`) passed, or the server gave up waiting
    for the put's next batch. A put that ended so committed nothing."""

    code = "DEADLINE_EXCEEDED"
    retryable = True


class Cancelled(QuiverError):
    code = "CANCELLED"


class Unauthenticated(QuiverError, PermissionError):
    code = "UNAUTHENTICATED"


class PermissionDenied(QuiverError, PermissionError):
    code = "PERMISSION_DENIED"


class Unimplemented(QuiverError, NotImplementedError):
    code = "UNIMPLEMENTED"


class Internal(QuiverError):
    """A stored file could not be decoded, or a server bug."""

    code = "INTERNAL"


class DataLoss(QuiverError):
    code = "DATA_LOSS"


_CLASSES: dict[str, type[QuiverError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        OutOfRange,
        ResourceExhausted,
        Aborted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unauthenticated,
        PermissionDenied,
        Unimplemented,
        Internal,
        DataLoss,
    )
}

# The code names in Arrow's gRPC transport prefix ("gRPC returned <name> error").
_TRANSPORT_NAMES = {
    "invalid argument": "INVALID_ARGUMENT",
    "precondition failed": "FAILED_PRECONDITION",
    "resource exhausted": "RESOURCE_EXHAUSTED",
    "out-of-range": "OUT_OF_RANGE",
    "aborted": "ABORTED",
    "data loss": "DATA_LOSS",
    "internal": "INTERNAL",
    "not found": "NOT_FOUND",
    "already exists": "ALREADY_EXISTS",
    "deadline exceeded": "DEADLINE_EXCEEDED",
    "unavailable": "UNAVAILABLE",
    "unauthenticated": "UNAUTHENTICATED",
    "permission denied": "PERMISSION_DENIED",
}

_PREFIX = re.compile(
    r"^(?:(?:gRPC|Flight) returned (?P<name>[a-z -]+) error|gRPC cancelled call|Flight RPC failed)"
    r",? with message: (?P<message>.*?)(?:\. gRPC client debug context: .*)?$",
    re.DOTALL,
)


def _code_of(error: Exception, name: Optional[str]) -> str:
    """The gRPC status code an exception of pyarrow stands for."""
    by_name = _TRANSPORT_NAMES.get(name or "")
    if isinstance(error, fl.FlightUnavailableError):
        return "UNAVAILABLE"
    if isinstance(error, fl.FlightTimedOutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(error, fl.FlightCancelledError):
        return "CANCELLED"
    if isinstance(error, fl.FlightUnauthenticatedError):
        return "UNAUTHENTICATED"
    if isinstance(error, fl.FlightUnauthorizedError):
        return "PERMISSION_DENIED"
    if isinstance(error, fl.FlightInternalError):
        return by_name if by_name in ("ABORTED", "DATA_LOSS") else "INTERNAL"
    if isinstance(error, fl.FlightWriteSizeExceededError):
        return "RESOURCE_EXHAUSTED"
    if isinstance(error, fl.FlightServerError):
        return "UNKNOWN"
    if isinstance(error, pa.ArrowNotImplementedError):
        return "UNIMPLEMENTED"
    if isinstance(error, pa.ArrowKeyError):
        return by_name if by_name == "ALREADY_EXISTS" else "NOT_FOUND"
    if isinstance(error, pa.ArrowInvalid):
        if by_name in ("FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"):
            return by_name
        return "INVALID_ARGUMENT"
    if isinstance(error, pa.ArrowCancelled):
        return "CANCELLED"
    return "UNKNOWN"


def translate(error: Exception) -> QuiverError:
    """Turns a pyarrow Flight exception into the QuiverError subclass of its gRPC status."""
    text = str(error)
    match = _PREFIX.match(text)
    code = _code_of(error, match.group("name") if match else None)
    message = match.group("message").strip() if match else text
    detail = getattr(error, "extra_info", b"") or b""
    cls = _CLASSES.get(code, QuiverError)
    return cls(message, code=code, detail=bytes(detail))


__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QuiverError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "translate",
]
