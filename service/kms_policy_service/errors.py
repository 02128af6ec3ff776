"""The service's error vocabulary, and THE table from KMS failures to gRPC statuses.

Exception tree (each class fixes its gRPC code; the reason varies per instance)::

    ServiceError
    ├── InvalidArgument      INVALID_ARGUMENT
    ├── NotFound             NOT_FOUND
    ├── FailedPrecondition   FAILED_PRECONDITION
    ├── Aborted              ABORTED
    ├── PermissionDenied     PERMISSION_DENIED
    ├── Unauthenticated      UNAUTHENTICATED
    ├── ResourceExhausted    RESOURCE_EXHAUSTED
    ├── Unavailable          UNAVAILABLE
    ├── DeadlineExceeded     DEADLINE_EXCEEDED
    └── Internal             INTERNAL

`KMS_ERROR_TABLE` maps a KMS error code (or one of the transport pseudo-codes
below) onto one of these; `from_kms_failure` is the one place that reads it and
`to_status` the one place that turns an error into a google.rpc.Status.
docs/errors.md renders the same table, and a test keeps the two equal.

This module imports only grpc and google.rpc (and the standard library).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "kmspolicy.v1"

# Transport pseudo-codes: failures that never reached KMS's error parser.
CONNECTION_ERROR = "ConnectionError"  # refused, reset, dropped, DNS
READ_TIMEOUT = "ReadTimeout"  # connect or read timeout
HTTP_5XX = "HTTP5xx"  # a 5xx whose body named no known error code
CREDENTIALS_MISSING = "NoCredentials"  # no usable AWS credentials in the chain


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field; for `policy`, `path` is the JSON path inside the document."""

    field: str
    description: str
    reason: str = ""
    path: str = ""


@dataclass(frozen=True)
class QuotaViolation:
    """The bucket that refused a call (operation, caller or key)."""

    subject: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    description: str = ""


class ServiceError(Exception):
    """Base of every error a caller can see. Subclasses fix the gRPC code."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        quota_violations: Sequence[QuotaViolation] = (),
        precondition_violations: Sequence[PreconditionViolation] = (),
        resource: Resource | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.quota_violations = tuple(quota_violations)
        self.precondition_violations = tuple(precondition_violations)
        self.resource = resource
        self.retry_after = retry_after
        self.violations_left_out = 0  # set by to_status when the trailer budget cut some

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message})"


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "KEY_NOT_FOUND"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "CALLER_NOT_AUTHORIZED"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "KMS_UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Internal(ServiceError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


@dataclass(frozen=True)
class KmsErrorRule:
    """How one KMS failure reaches the caller."""

    error: type[ServiceError]
    reason: str
    retryable: bool  # by the service's own retry loop
    message: str | None = None  # replaces KMS's text where that could leak the service's role
    retry_after: float | None = None  # RetryInfo hint to the caller, seconds
    operations: frozenset[str] = field(default_factory=frozenset)  # empty: every operation


# A member account's key is called with credentials from STS AssumeRole of the
# account's role: when getting them fails, the row is the one for operation AssumeRole.
_STS_UNAVAILABLE = KmsErrorRule(
    Unavailable,
    "STS_UNAVAILABLE",
    True,
    message="STS did not answer the service's AssumeRole for the key's account; retry shortly",
    retry_after=1.0,
    operations=frozenset({"AssumeRole"}),
)

# THE table. Keyed by KMS error code (`__type` / Error.Code) or transport pseudo-code;
# a list where the answer depends on the operation (first matching row wins).
# Sources: KMS API Reference "Errors" section of each operation, "Common Errors",
# and the botocore model (../shared/reference/kms-facts.md).
KMS_ERROR_TABLE: dict[str, tuple[KmsErrorRule, ...]] = {
    # API Reference, PutKeyPolicy/GetKeyPolicy: "The request was rejected because a
    # specified ARN, or an ARN in a key policy, is not valid."
    "InvalidArnException": (KmsErrorRule(InvalidArgument, "KMS_INVALID_ARN", False),),
    # API Reference, PutKeyPolicy: the policy has syntax errors or names unknown principals.
    "MalformedPolicyDocumentException": (
        KmsErrorRule(InvalidArgument, "KMS_MALFORMED_POLICY", False),
    ),
    # Common Errors: "The input fails to satisfy the constraints specified by an AWS service."
    "ValidationException": (KmsErrorRule(InvalidArgument, "KMS_VALIDATION", False),),
    # botocore model, InvalidMarkerException: "The request was rejected because the marker
    # that specifies where pagination should next begin is not valid." (listed for every
    # other KMS operation that takes a Marker; ListKeyPolicies takes one too). The only
    # Marker the service sends is ListKeyPolicies's, from the caller's page_token, which
    # is unsigned and can be forged: the caller's to fix, by listing from the first page.
    "InvalidMarkerException": (
        KmsErrorRule(
            InvalidArgument,
            "INVALID_PAGE_TOKEN",
            False,
            operations=frozenset({"ListKeyPolicies"}),
        ),
    ),
    # API Reference, PutKeyPolicy: the policy exceeds the 32 KB limit, which cannot be
    # raised, so it is a bad request and never retried. Elsewhere it is a quota.
    "LimitExceededException": (
        KmsErrorRule(
            InvalidArgument,
            "POLICY_TOO_LARGE",
            False,
            operations=frozenset({"PutKeyPolicy"}),
        ),
        KmsErrorRule(ResourceExhausted, "KMS_LIMIT_EXCEEDED", False, retry_after=1.0),
    ),
    # API Reference: "The request was rejected because the specified entity or resource
    # could not be found."
    "NotFoundException": (KmsErrorRule(NotFound, "KEY_NOT_FOUND", False),),
    # API Reference: the key's state does not allow the operation (also seen during
    # eventual-consistency windows right after a change).
    "KMSInvalidStateException": (KmsErrorRule(FailedPrecondition, "KMS_INVALID_STATE", False),),
    # API Reference: "The request was rejected because a specified parameter is not
    # supported or a specified resource is not valid for this operation."
    "UnsupportedOperationException": (
        KmsErrorRule(FailedPrecondition, "KMS_UNSUPPORTED_OPERATION", False),
    ),
    # Common Errors: the service's own role lacks the permission. The KMS text names
    # that role, so callers get our own sentence.
    "AccessDeniedException": (
        KmsErrorRule(
            PermissionDenied,
            "KMS_ACCESS_DENIED",
            False,
            message="KMS denied the service's own AWS role this operation; "
            "an operator must grant it (see deploy/iam-policy.json)",
        ),
    ),
    # Common Errors: NotAuthorized, "You do not have permission to perform this action."
    # As AccessDeniedException: the service's own role, named in KMS's text, so our own.
    "NotAuthorized": (
        KmsErrorRule(
            PermissionDenied,
            "KMS_ACCESS_DENIED",
            False,
            message="KMS denied the service's own AWS role this operation; "
            "an operator must grant it (see deploy/iam-policy.json)",
        ),
    ),
    # Common Errors: RequestExpired, "The request reached the service more than 15 minutes
    # after the date stamp on the request ... or the date stamp on the request is more
    # than 15 minutes in the future." Every request is signed with this host's clock, so
    # it is the operator's to fix (time sync) and a retry cannot help until then.
    "RequestExpired": (
        KmsErrorRule(
            Unavailable,
            "KMS_CLOCK_SKEW",
            False,
            message="KMS refused the request as signed more than 15 minutes from its own "
            "time: this host's clock is wrong; an operator must fix its time sync",
            retry_after=5.0,
        ),
    ),
    # Common Errors: OptInRequired, "The AWS access key ID needs a subscription for the
    # service" (an opt-in Region not enabled for the account). UNAVAILABLE, like
    # credentials, rather than FAILED_PRECONDITION: nothing in the caller's request or
    # key state is wrong, nothing the caller does fixes it, and once an operator opts
    # the account in the same request succeeds unchanged.
    "OptInRequired": (
        KmsErrorRule(
            Unavailable,
            "KMS_OPT_IN_REQUIRED",
            False,
            message="the service's AWS account is not opted in to KMS in this Region; "
            "an operator must enable the Region for the account",
            retry_after=5.0,
        ),
    ),
    # Common Errors: InvalidAction ("The action or operation requested is invalid"),
    # UnknownOperationException (the same, JSON protocols). The service calls only
    # operations every KMS Region has had since 2014, so the endpoint answering is not
    # KMS (or an emulator without them): --kms-endpoint-url is the operator's to fix.
    **{
        code: (
            KmsErrorRule(
                Unavailable,
                "KMS_ENDPOINT_MISCONFIGURED",
                False,
                message="the configured KMS endpoint does not know this operation; "
                "an operator must check the KMS endpoint URL",
                retry_after=5.0,
            ),
        )
        for code in ("InvalidAction", "UnknownOperationException")
    },
    # Common Errors: ValidationError, "The input fails to satisfy the constraints
    # specified by an AWS service", and InvalidParameterValue, "An invalid or
    # out-of-range value was supplied for the input parameter": the values are the
    # caller's key ID and policy, passed on after our own checks, as ValidationException.
    "ValidationError": (KmsErrorRule(InvalidArgument, "KMS_VALIDATION", False),),
    "InvalidParameterValue": (KmsErrorRule(InvalidArgument, "KMS_VALIDATION", False),),
    # Common Errors: MissingParameter ("A required parameter for the specified action is
    # not supplied"), InvalidParameterCombination ("Parameters that must not be used
    # together were used together"), MissingAction, InvalidQueryParameter and
    # MalformedQueryString (a malformed STS query), MalformedHttpRequestException (a body
    # KMS cannot read). Which parameters are sent, and how, is ours alone (botocore's
    # model, our code): a bug, so INTERNAL, logged with detail, generic to the caller.
    **{
        code: (KmsErrorRule(Internal, "INTERNAL", False, message="internal error"),)
        for code in (
            "MissingParameter",
            "InvalidParameterCombination",
            "MissingAction",
            "InvalidQueryParameter",
            "MalformedQueryString",
            "MalformedHttpRequestException",
        )
    },
    # Common Errors: RequestTimeoutException, "Reading the request timed out" (408): the
    # request did not reach KMS whole, like a dropped connection; it can be retried.
    "RequestTimeoutException": (
        KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),
    ),
    # STS AssumeRole: "You do not have permission to perform this action": the member
    # account's role does not trust the service (or wants another ExternalId). STS's text
    # names the service's own role, so callers get our own sentence.
    "AccessDenied": (
        KmsErrorRule(
            PermissionDenied,
            "ASSUME_ROLE_DENIED",
            False,
            message="STS refused to let the service assume its role in the key's account; "
            "an operator must check that role's trust policy (and ExternalId)",
            operations=frozenset({"AssumeRole"}),
        ),
    ),
    # STS AssumeRole: RegionDisabledException, "STS is not activated in the requested
    # region for the account that is being asked to generate credentials".
    "RegionDisabledException": (
        KmsErrorRule(
            Unavailable,
            "STS_REGION_DISABLED",
            False,
            message="STS is not activated in this Region for the service's account; "
            "an operator must activate it",
            retry_after=5.0,
            operations=frozenset({"AssumeRole"}),
        ),
    ),
    # STS (query protocol) spells throttling "Throttling"; AssumeRole is retried.
    "Throttling": (_STS_UNAVAILABLE,),
    # Pseudo-codes, --caller-session-tags: the caller's identity cannot be the session
    # tag (over IAM's 256 characters, or characters a tag value cannot hold). Refused,
    # never cut: a shortened identity could be someone else's.
    "CallerIdentityTooLong": (
        KmsErrorRule(
            PermissionDenied,
            "CALLER_IDENTITY_TOO_LONG",
            False,
            message="the caller's identity is longer than the 256 characters of a session "
            "tag, so calls on member accounts' keys cannot name it",
            operations=frozenset({"AssumeRole"}),
        ),
    ),
    "CallerIdentityNotTaggable": (
        KmsErrorRule(
            PermissionDenied,
            "CALLER_IDENTITY_NOT_TAGGABLE",
            False,
            message="the caller's identity holds characters a session tag cannot "
            "(letters, digits, spaces and _.:/=+-@ only), so calls on member accounts' keys "
            "cannot name it",
            operations=frozenset({"AssumeRole"}),
        ),
    ),
    # Common Errors: "The request was denied due to request throttling."
    "ThrottlingException": (
        KmsErrorRule(ResourceExhausted, "KMS_THROTTLED", True, retry_after=1.0),
    ),
    # API Reference: "The system timed out while trying to fulfill the request. You can
    # retry the request."
    "DependencyTimeoutException": (
        KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),
    ),
    # API Reference: "The request was rejected because an internal exception occurred.
    # The request can be retried."
    "KMSInternalException": (KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),),
    # Common Errors: ServiceUnavailable (503) and InternalFailure (500).
    "ServiceUnavailable": (
        _STS_UNAVAILABLE,
        KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),
    ),
    "InternalFailure": (
        _STS_UNAVAILABLE,
        KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),
    ),
    HTTP_5XX: (
        _STS_UNAVAILABLE,
        KmsErrorRule(Unavailable, "KMS_UNAVAILABLE", True, retry_after=1.0),
    ),
    CONNECTION_ERROR: (
        _STS_UNAVAILABLE,
        KmsErrorRule(
            Unavailable,
            "KMS_UNAVAILABLE",
            True,
            message="could not reach KMS",
            retry_after=1.0,
        ),
    ),
    READ_TIMEOUT: (
        _STS_UNAVAILABLE,
        KmsErrorRule(
            Unavailable,
            "KMS_UNAVAILABLE",
            True,
            message="KMS did not answer in time",
            retry_after=1.0,
        ),
    ),
    # The service's own credentials: never UNAUTHENTICATED, which would blame the caller.
    # Common Errors: IncompleteSignature ("The request signature does not conform to AWS
    # standards"), InvalidClientTokenId and UnrecognizedClientException ("The X.509
    # certificate or AWS access key ID provided does not exist in our records"),
    # ExpiredTokenException ("The security token included in the request is expired"),
    # MissingAuthenticationToken; STS/KMS: InvalidSignatureException, ExpiredToken,
    # SignatureDoesNotMatch; JSON-protocol spellings with "Exception" appended. Some
    # arrive only in the X-Amzn-ErrorType header (kms.py reads it).
    **{
        code: (
            KmsErrorRule(
                Unavailable,
                "KMS_CREDENTIALS",
                False,
                message="the service's AWS credentials are missing, expired or rejected; "
                "an operator must fix them",
                retry_after=5.0,
            ),
        )
        for code in (
            CREDENTIALS_MISSING,
            "UnrecognizedClientException",
            "ExpiredTokenException",
            "ExpiredToken",
            "InvalidSignatureException",
            "IncompleteSignature",
            "InvalidClientTokenId",
            "MissingAuthenticationToken",
            "SignatureDoesNotMatch",
            "IncompleteSignatureException",
            "MissingAuthenticationTokenException",
        )
    },
}

# An unknown KMS code: a bug or a new KMS error; the caller gets a generic INTERNAL.
UNKNOWN_KMS_ERROR = KmsErrorRule(Internal, "INTERNAL", False, message="internal error")


def kms_rule(code: str, operation: str, http_status: int | None = None) -> KmsErrorRule:
    """The table row for a KMS failure of `operation`."""
    for rule in KMS_ERROR_TABLE.get(code, ()):
        if not rule.operations or operation in rule.operations:
            return rule
    if http_status is not None and http_status >= 500 and code != HTTP_5XX:
        return kms_rule(HTTP_5XX, operation)
    return UNKNOWN_KMS_ERROR


def from_kms_failure(
    code: str,
    message: str,
    *,
    operation: str,
    http_status: int | None = None,
    key_arn: str | None = None,
) -> ServiceError:
    """Turn one KMS failure into the caller-facing error, per KMS_ERROR_TABLE."""
    rule = kms_rule(code, operation, http_status)
    metadata = {"kmsErrorCode": code, "kmsOperation": operation}
    if key_arn:
        metadata["keyArn"] = key_arn
    text = rule.message or f"KMS {operation} failed: {code}: {message or 'no message'}"
    resource = Resource("kms-key", key_arn) if key_arn and rule.error is NotFound else None
    return rule.error(
        text,
        reason=rule.reason,
        metadata=metadata,
        retry_after=rule.retry_after,
        resource=resource,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(max(0, round(seconds * 1e9)))
    return d


# gRPC clients refuse trailers over 8 KiB (grpc.max_metadata_size); the status travels
# base64-encoded in grpc-status-details-bin, beside grpc-message. These keep it well under.
MAX_STATUS_BYTES = 4096  # serialized google.rpc.Status
MAX_FIELD_VIOLATIONS = 20  # then one TOO_MANY_FINDINGS violation says how many were left out
MAX_TEXT_CHARS = 512  # of a message, a description or a metadata value
TOO_MANY_FINDINGS = "TOO_MANY_FINDINGS"


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 15] + "... (truncated)"


def to_status(error: ServiceError, *, request_id: str = "") -> status_pb2.Status:
    """Build the google.rpc.Status (with exactly one ErrorInfo) for an error.

    Whatever the error carries, the result fits in MAX_STATUS_BYTES: long texts are
    clipped and field violations beyond what fits are summarised in a final
    TOO_MANY_FINDINGS violation (the caller must not mistake a too-large trailer
    for RESOURCE_EXHAUSTED, which the contract says to retry).
    """
    violations = list(error.field_violations)
    most = max(len(violations), len(error.precondition_violations))
    keep = min(most, MAX_FIELD_VIOLATIONS)
    while True:
        status = _status(error, request_id, violations, keep)
        if status.ByteSize() <= MAX_STATUS_BYTES or keep == 0:
            error.violations_left_out = max(0, most - keep)
            return status
        keep = max(0, keep - max(1, keep // 4))


def _status(
    error: ServiceError, request_id: str, violations: list[FieldViolation], keep: int
) -> status_pb2.Status:
    metadata = {k: clip(v) for k, v in error.metadata.items()}
    if request_id:
        metadata["requestId"] = request_id
    paths = [clip(v.path) for v in violations[:keep]]
    if any(paths):
        # The JSON path of each BadRequest violation below, in order ("" where none, and
        # for the TOO_MANY_FINDINGS summary): clients need not split it out of the
        # description, which keeps its "path: " prefix for older clients.
        paths += [""] if keep < len(violations) else []
        metadata["violationPaths"] = json.dumps(paths, ensure_ascii=False, separators=(",", ":"))
    status = status_pb2.Status(code=error.code.value[0], message=clip(error.message))
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
    )
    if violations:
        bad = error_details_pb2.BadRequest()
        for v in violations[:keep]:
            description = f"{v.path}: {v.description}" if v.path else v.description
            bad.field_violations.add(field=v.field, description=clip(description), reason=v.reason)
        if keep < len(violations):
            left_out = len(violations) - keep
            bad.field_violations.add(
                field=violations[keep].field,
                description=f"{left_out} more problems not listed; fix these and retry, "
                "or call ValidateKeyPolicy to list them",
                reason=TOO_MANY_FINDINGS,
            )
        status.details.add().Pack(bad)
    if error.precondition_violations:
        pre = error_details_pb2.PreconditionFailure()
        conditions = error.precondition_violations
        for p in conditions[:keep]:
            pre.violations.add(
                type=p.type, subject=clip(p.subject), description=clip(p.description)
            )
        if keep < len(conditions):
            pre.violations.add(
                type=TOO_MANY_FINDINGS,
                description=f"{len(conditions) - keep} more violations not listed; fix these "
                "and retry, or call ValidateKeyPolicy to list them",
            )
        status.details.add().Pack(pre)
    if error.resource is not None:
        status.details.add().Pack(
            error_details_pb2.ResourceInfo(
                resource_type=error.resource.type,
                resource_name=error.resource.name,
                description=error.resource.description,
            )
        )
    if error.retry_after is not None:
        status.details.add().Pack(
            error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after))
        )
    if error.quota_violations:
        quota = error_details_pb2.QuotaFailure()
        for q in error.quota_violations:
            quota.violations.add(subject=q.subject, description=q.description)
        status.details.add().Pack(quota)
    return status


def internal_error(request_id: str) -> Internal:
    """The generic answer to an unexpected exception: details stay in the server log."""
    return Internal(f"internal error (request id {request_id})", reason="INTERNAL")
