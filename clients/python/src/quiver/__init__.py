"""Quiver: store and load data assets through an Arrow Flight service."""

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
