"""The client's exceptions, rebuilt from the google.rpc status details the service sends.

PolicyError                    any failed call (code, reason, message, request_id, details)
├── NotFoundError              NOT_FOUND: no such key (or policy); .resource
├── InvalidRequestError        INVALID_ARGUMENT: .violations (field, path, description, reason)
│   └── LockoutError           reason POLICY_LOCKOUT
├── PreconditionFailedError    FAILED_PRECONDITION (AWS-managed key, key state): .preconditions
│   └── GuardrailViolationError reason GUARDRAIL_VIOLATION: .guardrails, .violations
├── EtagMismatchError          ABORTED / ETAG_MISMATCH: .current_etag
├── PermissionDeniedError      PERMISSION_DENIED (the caller, or the service's AWS role)
│   └── OutOfScopeError        reason OUT_OF_SCOPE: .caller, .violations
├── UnauthenticatedError       UNAUTHENTICATED
├── RateLimitedError           RESOURCE_EXHAUSTED: .retry_after (seconds), .quota_violations
├── UnavailableError           UNAVAILABLE: .retry_after (seconds, or None)
├── DeadlineExceededError      DEADLINE_EXCEEDED
└── InternalError              INTERNAL, UNKNOWN and anything else

Every detail the service sent is kept, as google-api-core does: `details` holds each
one unpacked to its google.rpc type (an unknown type stays a google.protobuf.Any), and
the typed attributes above are read from them. A policy refusal of any kind (a bad
document, a change outside the caller's scope, a guardrail) lists each problem in
`violations`, with its JSON path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, message
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "DeadlineExceededError",
    "EtagMismatchError",
    "GuardrailViolation",
    "GuardrailViolationError",
    "InternalError",
    "InvalidRequestError",
    "LockoutError",
    "NotFoundError",
    "OutOfScopeError",
    "PermissionDeniedError",
    "PolicyError",
    "PreconditionFailedError",
    "PreconditionViolation",
    "QuotaViolation",
    "RateLimitedError",
    "Resource",
    "UnauthenticatedError",
    "UnavailableError",
    "Violation",
]

# The detail types google.rpc defines (those google-api-core unpacks), by full name.
_DETAIL_TYPES: dict[str, type[message.Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.RetryInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.QuotaFailure,
        error_details_pb2.ResourceInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.RequestInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
    )
}

# ErrorInfo metadata: a JSON array with the JSON path of each BadRequest violation, in
# order ("" where none). docs/errors.md.
VIOLATION_PATHS = "violationPaths"
# PreconditionFailure violations of a guardrail have the type "guardrail/<name>".
GUARDRAIL_TYPE_PREFIX = "guardrail/"


@dataclass(frozen=True)
class Violation:
    """One bad field; for `policy`, `path` is the JSON path inside the document."""

    field: str
    path: str
    description: str
    reason: str


@dataclass(frozen=True)
class GuardrailViolation(Violation):
    """One problem with a guardrail (`principal_accounts`, `public`, ...): `path` is where in
    the new document (`Statement` for a removed protected statement), `field` is `policy`
    and `reason` is `GUARDRAIL_<NAME>`, the code ValidateKeyPolicy reports it with."""

    guardrail: str


@dataclass(frozen=True)
class PreconditionViolation:
    """A precondition the call failed (google.rpc.PreconditionFailure), e.g. an AWS-managed key."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """The limit that refused a call (google.rpc.QuotaFailure): `operation:...`, `key:...`."""

    subject: str
    description: str


@dataclass(frozen=True)
class Resource:
    """The resource the error is about (google.rpc.ResourceInfo), e.g. the missing key."""

    type: str
    name: str
    owner: str
    description: str


class PolicyError(Exception):
    """Base of every error the client raises for a failed call."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        violations: tuple[Violation, ...] = (),
        retry_after: float | None = None,
        preconditions: tuple[PreconditionViolation, ...] = (),
        quota_violations: tuple[QuotaViolation, ...] = (),
        resource: Resource | None = None,
        details: tuple[message.Message, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.violations = violations
        self.retry_after = retry_after
        self.preconditions = preconditions
        self.quota_violations = quota_violations
        self.resource = resource
        self.details = details  # every detail as sent, unpacked

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


class GuardrailViolationError(PreconditionFailedError):
    """The new policy breaks an operator guardrail, whoever writes it; one violation per
    problem (`preconditions` keeps the PreconditionFailure as sent)."""

    violations: tuple[GuardrailViolation, ...]

    @property
    def guardrails(self) -> tuple[str, ...]:
        """The names of the guardrails broken, as the service lists them."""
        listed = self.metadata.get("guardrails", "")
        names = [n for n in listed.split(",") if n]
        return tuple(names) if names else tuple(sorted({v.guardrail for v in self.violations}))


class EtagMismatchError(PolicyError):
    @property
    def current_etag(self) -> str:
        return self.metadata.get("currentEtag", "")


class PermissionDeniedError(PolicyError):
    pass


class OutOfScopeError(PermissionDeniedError):
    """The caller may write this key's policy, but not this change: `violations` names each
    statement, principal or action outside the caller's scope, with its JSON path."""

    @property
    def caller(self) -> str:
        """The identity the service judged (mTLS, XFCC, or `local`)."""
        return self.metadata.get("caller", "")


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
# A reason refines the class only under its own code: a subclass keeps its parent's code.
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[PolicyError]] = {
    (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_LOCKOUT"): LockoutError,
    (grpc.StatusCode.FAILED_PRECONDITION, "GUARDRAIL_VIOLATION"): GuardrailViolationError,
    (grpc.StatusCode.PERMISSION_DENIED, "OUT_OF_SCOPE"): OutOfScopeError,
}


def _unpack(detail: any_pb2.Any) -> message.Message:
    cls = _DETAIL_TYPES.get(detail.TypeName())
    if cls is None:
        return detail  # not a google.rpc type: kept as sent
    unpacked = cls()
    detail.Unpack(unpacked)
    return unpacked


def _paths(metadata: dict[str, str]) -> list[str]:
    """The violations' JSON paths the service sent; none from a service that sends none."""
    try:
        paths = json.loads(metadata.get(VIOLATION_PATHS, "[]"))
    except ValueError:
        return []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return []
    return paths


def _violation(v: error_details_pb2.BadRequest.FieldViolation, path: str) -> Violation:
    # The description still starts with "path: " for older clients; drop exactly that.
    prefix = f"{path}: "
    description = v.description.removeprefix(prefix) if path else v.description
    return Violation(v.field, path, description, v.reason)


def _guardrail_violations(
    preconditions: tuple[PreconditionViolation, ...],
) -> tuple[GuardrailViolation, ...]:
    out = []
    for p in preconditions:
        name = p.type.removeprefix(GUARDRAIL_TYPE_PREFIX)
        if name != p.type and name:
            reason = f"GUARDRAIL_{name.upper()}"
            out.append(GuardrailViolation("policy", p.subject, p.description, reason, name))
    return tuple(out)


def from_status(
    code: grpc.StatusCode, details: str, status: status_pb2.Status | None
) -> PolicyError:
    """Build the right exception from a call's code, message and rich status (if any)."""
    unpacked = tuple(_unpack(d) for d in status.details) if status is not None else ()
    info = next((d for d in unpacked if isinstance(d, error_details_pb2.ErrorInfo)), None)
    metadata = dict(info.metadata) if info is not None else {}
    fields = [
        v
        for d in unpacked
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]
    paths = _paths(metadata)
    if len(paths) != len(fields):
        paths = [""] * len(fields)  # not ours to guess: keep each description whole
    retry = next((d for d in unpacked if isinstance(d, error_details_pb2.RetryInfo)), None)
    resource = next((d for d in unpacked if isinstance(d, error_details_pb2.ResourceInfo)), None)
    reason = info.reason if info is not None else ""
    cls = _BY_REASON.get((code, reason)) or _BY_CODE.get(code, InternalError)
    preconditions = tuple(
        PreconditionViolation(p.type, p.subject, p.description)
        for d in unpacked
        if isinstance(d, error_details_pb2.PreconditionFailure)
        for p in d.violations
    )
    violations: tuple[Violation, ...] = tuple(
        _violation(v, p) for v, p in zip(fields, paths, strict=True)
    )
    if cls is GuardrailViolationError:
        # Its problems travel as a PreconditionFailure (the service sends no BadRequest).
        violations = _guardrail_violations(preconditions)
    return cls(
        details or code.name,
        code=code,
        reason=reason,
        domain=info.domain if info is not None else "",
        metadata=metadata,
        violations=violations,
        retry_after=retry.retry_delay.ToNanoseconds() / 1e9 if retry is not None else None,
        preconditions=preconditions,
        quota_violations=tuple(
            QuotaViolation(q.subject, q.description)
            for d in unpacked
            if isinstance(d, error_details_pb2.QuotaFailure)
            for q in d.violations
        ),
        resource=(
            Resource(
                resource.resource_type,
                resource.resource_name,
                resource.owner,
                resource.description,
            )
            if resource is not None
            else None
        ),
        details=unpacked,
    )
