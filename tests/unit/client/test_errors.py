"""Client errors rebuilt from google.rpc status details, class per outcome."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from kms_policy_client import errors


def status(code: grpc.StatusCode, reason: str, **extra: object) -> status_pb2.Status:
    s = status_pb2.Status(code=code.value[0], message="m")
    s.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason=reason, domain="kmspolicy.v1", metadata={"requestId": "r"}
        )
    )
    for detail in extra.values():
        s.details.add().Pack(detail)  # type: ignore[arg-type]
    return s


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND", errors.NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY", errors.InvalidRequestError),
        (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_LOCKOUT", errors.LockoutError),
        (grpc.StatusCode.FAILED_PRECONDITION, "AWS_MANAGED_KEY", errors.PreconditionFailedError),
        (grpc.StatusCode.ABORTED, "ETAG_MISMATCH", errors.EtagMismatchError),
        (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_AUTHORIZED", errors.PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", errors.UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", errors.RateLimitedError),
        (grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", errors.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", errors.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, "INTERNAL", errors.InternalError),
        (grpc.StatusCode.UNKNOWN, "", errors.InternalError),
    ],
)
def test_each_outcome_has_its_class(
    code: grpc.StatusCode, reason: str, cls: type[errors.PolicyError]
) -> None:
    err = errors.from_status(code, "m", status(code, reason))
    assert type(err) is cls and isinstance(err, errors.PolicyError)
    assert err.reason == reason and err.request_id == "r"


def test_violations_and_retry_after_are_attributes() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(
        field="policy", description="Statement[0].Effect: bad", reason="INVALID_EFFECT"
    )
    bad.field_violations.add(
        field="key_id", description="key_id 'x' is bad: really", reason="INVALID_KEY_ID"
    )
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
    )
    err = errors.from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "m",
        status(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY", bad=bad, retry=retry),
    )
    assert err.violations == (
        errors.Violation("policy", "Statement[0].Effect", "bad", "INVALID_EFFECT"),
        errors.Violation("key_id", "", "key_id 'x' is bad: really", "INVALID_KEY_ID"),
    )
    assert err.retry_after == 1.5


def test_a_status_without_details_still_maps_by_code() -> None:
    err = errors.from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert (
        isinstance(err, errors.UnavailableError)
        and err.reason == ""
        and str(err) == "UNAVAILABLE: connection refused"
    )
