"""Typed errors carrying the server's message and gRPC status."""

from __future__ import annotations

import re
from typing import Optional

import pyarrow as pa
import pyarrow.flight as fl


class QuiverError(Exception):
    """Any error Quiver reported; `code` is the gRPC status name, e.g. "NOT_FOUND"."""

    code: Optional[str] = None

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(QuiverError, ValueError):
    code = "INVALID_ARGUMENT"


class NotFound(QuiverError, KeyError):
    code = "NOT_FOUND"

    def __str__(self) -> str:
        return self.message


class FailedPrecondition(QuiverError):
    code = "FAILED_PRECONDITION"


class Aborted(QuiverError):
    """The asset changed while it was being read; retrying is safe."""

    code = "ABORTED"


class Unavailable(QuiverError, ConnectionError):
    code = "UNAVAILABLE"


class Cancelled(QuiverError):
    code = "CANCELLED"


class Unauthenticated(QuiverError, PermissionError):
    code = "UNAUTHENTICATED"


class PermissionDenied(QuiverError, PermissionError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(QuiverError):
    code = "RESOURCE_EXHAUSTED"


_BY_GRPC_NAME = {
    "invalid argument": InvalidArgument,
    "not found": NotFound,
    "precondition failed": FailedPrecondition,
    "failed precondition": FailedPrecondition,
    "aborted": Aborted,
    "unavailable": Unavailable,
    "cancelled": Cancelled,
    "unauthenticated": Unauthenticated,
    "permission denied": PermissionDenied,
    "resource exhausted": ResourceExhausted,
}

_MESSAGE = re.compile(
    r"gRPC returned (?P<code>[a-z ]+) error, with message: (?P<message>.*?)(?:\. gRPC client debug context:.*)?$",
    re.DOTALL,
)


def translate(error: Exception) -> QuiverError:
    """Turns a pyarrow Flight exception into the matching QuiverError subclass."""
    text = str(error)
    match = _MESSAGE.search(text)
    if match:
        cls = _BY_GRPC_NAME.get(match.group("code"), QuiverError)
        return cls(match.group("message").strip())
    if isinstance(error, fl.FlightUnavailableError):
        return Unavailable(text)
    if isinstance(error, fl.FlightCancelledError):
        return Cancelled(text)
    if isinstance(error, fl.FlightUnauthenticatedError):
        return Unauthenticated(text)
    if isinstance(error, fl.FlightUnauthorizedError):
        return PermissionDenied(text)
    if isinstance(error, pa.ArrowKeyError):
        return NotFound(text)
    if isinstance(error, pa.ArrowInvalid):
        return InvalidArgument(text)
    return QuiverError(text)
