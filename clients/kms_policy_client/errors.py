"""The client's exceptions, rebuilt from the google.rpc status details the service sends.

PolicyError                    any failed call (code, reason, message, request_id)
├── NotFoundError              NOT_FOUND: no such key (or policy)
├── InvalidRequestError        INVALID_ARGUMENT: .violations (field, path, description, reason)
│   └── LockoutError           reason POLICY_LOCKOUT
├── PreconditionFailedError    FAILED_PRECONDITION (AWS-managed key, key state)
├── EtagMismatchError          ABORTED / ETAG_MISMATCH: .current_etag
├── PermissionDeniedError      PERMISSION_DENIED (the caller, or the service's AWS role)
├── UnauthenticatedError       UNAUTHENTICATED
├── RateLimitedError           RESOURCE_EXHAUSTED: .retry_after (seconds)
├── UnavailableError           UNAVAILABLE: .retry_after (seconds, or None)
├── DeadlineExceededError      DEADLINE_EXCEEDED
└── InternalError              INTERNAL, UNKNOWN and anything else
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "DeadlineExceededError",
    "EtagMismatchError",
    "InternalError",
    "InvalidRequestError",
    "LockoutError",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyError",
    "PreconditionFailedError",
    "RateLimitedError",
    "UnauthenticatedError",
    "UnavailableError",
    "Violation",
]


@dataclass(frozen=True)
class Violation:
    """One bad field; for `policy`, `path` is the JSON path inside the document."""

    field: str
    path: str
    description: str
    reason: str


class PolicyError(Exception):
    """Base of every error the client raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: tuple[Violation, ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = violations
        self.retry_after = retry_after

    @property
    def request_id(self) -> str:
        return self.metadata.get("requestId", "")

    def __str__(self) -> str:
        reason = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"


class NotFoundError(PolicyError):
    pass


class InvalidRequestError(PolicyError):
    pass


class LockoutError(InvalidRequestError):
    pass


class PreconditionFailedError(PolicyError):
    pass


class EtagMismatchError(PolicyError):
    @property
    def current_etag(self) -> str:
        return self.metadata.get("currentEtag", "")


class PermissionDeniedError(PolicyError):
    pass


class UnauthenticatedError(PolicyError):
    pass


class RateLimitedError(PolicyError):
    pass


class UnavailableError(PolicyError):
    pass


class DeadlineExceededError(PolicyError):
    pass


class InternalError(PolicyError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[PolicyError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailedError,
    grpc.StatusCode.ABORTED: EtagMismatchError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}
_BY_REASON: dict[str, type[PolicyError]] = {"POLICY_LOCKOUT": LockoutError}


def _violation(v: error_details_pb2.BadRequest.FieldViolation) -> Violation:
    path, sep, rest = v.description.partition(": ")
    is_path = bool(sep) and " " not in path and v.field == "policy"
    return Violation(v.field, path if is_path else "", rest if is_path else v.description, v.reason)


def from_status(
    code: grpc.StatusCode, details: str, status: status_pb2.Status | None
) -> PolicyError:
    """Build the right exception from a call's code, message and rich status (if any)."""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[Violation] = []
    retry_after: float | None = None
    if status is not None:
        for any_msg in status.details:
            if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_msg.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_msg.Unpack(bad)
                violations.extend(_violation(v) for v in bad.field_violations)
            elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                any_msg.Unpack(retry)
                retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, InternalError)
    return cls(
        details or code.name,
        code=code,
        reason=reason,
        metadata=metadata,
        violations=tuple(violations),
        retry_after=retry_after,
    )
