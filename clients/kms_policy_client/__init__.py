"""Python client for kms-policy-service: async and sync clients, typed results and errors."""

from kms_policy_client._client import PolicyClient, PolicyClientSync
from kms_policy_client._errors import (
    DeadlineExceededError,
    EtagMismatchError,
    GuardrailViolation,
    GuardrailViolationError,
    InternalError,
    InvalidRequestError,
    LockoutError,
    NotFoundError,
    OutOfScopeError,
    PermissionDeniedError,
    PolicyError,
    PreconditionFailedError,
    PreconditionViolation,
    QuotaViolation,
    RateLimitedError,
    Resource,
    UnauthenticatedError,
    UnavailableError,
    Violation,
)
from kms_policy_client._options import ClientOptions, TLSConfig
from kms_policy_client._results import Finding, Policy, PutResult, Severity, ValidationResult

__all__ = [
    "ClientOptions",
    "DeadlineExceededError",
    "EtagMismatchError",
    "Finding",
    "GuardrailViolation",
    "GuardrailViolationError",
    "InternalError",
    "InvalidRequestError",
    "LockoutError",
    "NotFoundError",
    "OutOfScopeError",
    "PermissionDeniedError",
    "Policy",
    "PolicyClient",
    "PolicyClientSync",
    "PolicyError",
    "PreconditionFailedError",
    "PreconditionViolation",
    "PutResult",
    "QuotaViolation",
    "RateLimitedError",
    "Resource",
    "Severity",
    "TLSConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "ValidationResult",
    "Violation",
]

# Public names say where to import them from (tracebacks, reprs, docs), as httpx does.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
