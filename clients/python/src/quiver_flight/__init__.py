"""Quiver: store and load data assets through an Arrow Flight service."""

__version__ = "0.1.0"

from .client import AssetInfo, Client, PutResult, TargetInfo
from .errors import (
    Aborted,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuiverError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "__version__",
    "Aborted",
    "AssetInfo",
    "Cancelled",
    "Client",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PutResult",
    "QuiverError",
    "ResourceExhausted",
    "TargetInfo",
    "Unauthenticated",
    "Unavailable",
]
