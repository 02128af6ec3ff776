"""Python client for kms-policy-service: async and sync clients, typed results and errors."""

from kms_policy_client.client import PolicyClient, PolicyClientSync
from kms_policy_client.errors import (
    DeadlineExceededError,
    EtagMismatchError,
    InternalError,
    InvalidRequestError,
    LockoutError,
    NotFoundError,
    PermissionDeniedError,
    PolicyError,
    PreconditionFailedError,
    RateLimitedError,
    UnauthenticatedError,
    UnavailableError,
    Violation,
)
from kms_policy_client.options import ClientOptions, TLSConfig
from kms_policy_client.results import Finding, Policy, PutResult, Severity, ValidationResult

__all__ = [
    "ClientOptions",
    "DeadlineExceededError",
    "EtagMismatchError",
    "Finding",
    "InternalError",
    "InvalidRequestError",
    "LockoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "Policy",
    "PolicyClient",
    "PolicyClientSync",
    "PolicyError",
    "PreconditionFailedError",
    "PutResult",
    "RateLimitedError",
    "Severity",
    "TLSConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "ValidationResult",
    "Violation",
]
