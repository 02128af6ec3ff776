"""Client errors rebuilt from google.rpc status details, class per outcome, every detail kept."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2

import kms_policy_client as kpc
from kms_policy_client._errors import from_status


def status(
    code: grpc.StatusCode, reason: str, *details: message.Message, **metadata: str
) -> status_pb2.Status:
    s = status_pb2.Status(code=code.value[0], message="m")
    s.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason=reason, domain="kmspolicy.v1", metadata={"requestId": "r", **metadata}
        )
    )
    for detail in details:
        s.details.add().Pack(detail)
    return s


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND", kpc.NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY", kpc.InvalidRequestError),
        (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_LOCKOUT", kpc.LockoutError),
        (grpc.StatusCode.FAILED_PRECONDITION, "AWS_MANAGED_KEY", kpc.PreconditionFailedError),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "GUARDRAIL_VIOLATION",
            kpc.GuardrailViolationError,
        ),
        (grpc.StatusCode.PERMISSION_DENIED, "OUT_OF_SCOPE", kpc.OutOfScopeError),
        # A reason refines only under its own code: the class keeps the code's meaning.
        (grpc.StatusCode.INVALID_ARGUMENT, "GUARDRAIL_VIOLATION", kpc.InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, "OUT_OF_SCOPE", kpc.PreconditionFailedError),
        (grpc.StatusCode.ABORTED, "ETAG_MISMATCH", kpc.EtagMismatchError),
        (grpc.StatusCode.PERMISSION_DENIED, "CALLER_NOT_AUTHORIZED", kpc.PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", kpc.UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", kpc.RateLimitedError),
        (grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", kpc.UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", kpc.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, "INTERNAL", kpc.InternalError),
        (grpc.StatusCode.UNKNOWN, "", kpc.InternalError),
    ],
)
def test_each_outcome_has_its_class(
    code: grpc.StatusCode, reason: str, cls: type[kpc.PolicyError]
) -> None:
    err = from_status(code, "m", status(code, reason))
    assert type(err) is cls and isinstance(err, kpc.PolicyError)
    assert err.reason == reason and err.request_id == "r" and err.domain == "kmspolicy.v1"


def test_violations_carry_the_json_path_the_service_sends_and_retry_after() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(
        field="policy", description="Statement[0].Effect: bad", reason="INVALID_EFFECT"
    )
    # A JSON key may hold ": " itself: the path comes from the status, not from the text.
    odd = "Statement[1].Condition.StringEquals.a: b"
    bad.field_violations.add(field="policy", description=f"{odd}: unknown key", reason="X")
    bad.field_violations.add(field="policy", description="Statement: missing", reason="Y")
    bad.field_violations.add(
        field="key_id", description="key_id 'x' is bad: really", reason="INVALID_KEY_ID"
    )
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000)
    )
    paths = json.dumps(["Statement[0].Effect", odd, "", ""])
    err = from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "m",
        status(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY", bad, retry, violationPaths=paths
        ),
    )
    assert err.violations == (
        kpc.Violation("policy", "Statement[0].Effect", "bad", "INVALID_EFFECT"),
        kpc.Violation("policy", odd, "unknown key", "X"),
        kpc.Violation("policy", "", "Statement: missing", "Y"),  # whole document: no path
        kpc.Violation("key_id", "", "key_id 'x' is bad: really", "INVALID_KEY_ID"),
    )
    assert err.retry_after == 1.5


@pytest.mark.parametrize("paths", [None, "not json", '["only one"]', "[1, 2]"])
def test_without_usable_paths_each_description_is_kept_whole(paths: str | None) -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field="policy", description="Statement[0].Effect: bad", reason="R")
    bad.field_violations.add(field="policy", description="Statement: bad", reason="R")
    extra = {} if paths is None else {"violationPaths": paths}
    err = from_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "m",
        status(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY", bad, **extra),
    )
    assert [(v.path, v.description) for v in err.violations] == [
        ("", "Statement[0].Effect: bad"),
        ("", "Statement: bad"),
    ]


def test_preconditions_quotas_and_the_resource_are_kept() -> None:
    pre = error_details_pb2.PreconditionFailure()
    pre.violations.add(type="KEY_MANAGER", subject="arn:k", description="AWS-managed")
    quota = error_details_pb2.QuotaFailure()
    quota.violations.add(subject="operation:PutKeyPolicy", description="1/s")
    quota.violations.add(subject="key:arn:k", description="1 Put per key per second")
    resource = error_details_pb2.ResourceInfo(
        resource_type="kms-key", resource_name="arn:k", owner="o", description="d"
    )
    err = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "m",
        status(grpc.StatusCode.FAILED_PRECONDITION, "AWS_MANAGED_KEY", pre, quota, resource),
    )
    assert err.preconditions == (kpc.PreconditionViolation("KEY_MANAGER", "arn:k", "AWS-managed"),)
    assert err.quota_violations == (
        kpc.QuotaViolation("operation:PutKeyPolicy", "1/s"),
        kpc.QuotaViolation("key:arn:k", "1 Put per key per second"),
    )
    assert err.resource == kpc.Resource("kms-key", "arn:k", "o", "d")


def test_every_detail_is_kept_unpacked_in_order_and_unknown_ones_as_sent() -> None:
    help_ = error_details_pb2.Help()
    help_.links.add(description="docs", url="https://example.com")
    unknown = wrappers_pb2.StringValue(value="x")
    sent = status(
        grpc.StatusCode.UNAVAILABLE,
        "KMS_UNAVAILABLE",
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)),
        error_details_pb2.DebugInfo(detail="d"),
        error_details_pb2.RequestInfo(request_id="q"),
        help_,
        error_details_pb2.LocalizedMessage(locale="en-US", message="l"),
        unknown,
    )
    err = from_status(grpc.StatusCode.UNAVAILABLE, "m", sent)
    assert [type(d).__name__ for d in err.details] == [
        "ErrorInfo",
        "RetryInfo",
        "DebugInfo",
        "RequestInfo",
        "Help",
        "LocalizedMessage",
        "Any",
    ]
    assert err.details[4] == help_
    last = err.details[-1]
    assert isinstance(last, any_pb2.Any) and last.Is(wrappers_pb2.StringValue.DESCRIPTOR)


def test_a_status_without_details_still_maps_by_code() -> None:
    err = from_status(grpc.StatusCode.UNAVAILABLE, "connection refused", None)
    assert (
        isinstance(err, kpc.UnavailableError)
        and err.reason == ""
        and err.details == ()
        and str(err) == "UNAVAILABLE: connection refused"
    )


def test_a_guardrail_violation_names_the_guardrails_and_each_problem_with_its_path() -> None:
    pre = error_details_pb2.PreconditionFailure()
    pre.violations.add(
        type="guardrail/principal_accounts",
        subject="Statement[1].Principal.AWS[1]",
        description="account 999999999999 is not allowed",
    )
    pre.violations.add(
        type="guardrail/protected_sids", subject="Statement", description="'Admins' removed"
    )
    pre.violations.add(type="KEY_STATE", subject="arn:k", description="not ours")
    err = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "m",
        status(
            grpc.StatusCode.FAILED_PRECONDITION,
            "GUARDRAIL_VIOLATION",
            pre,
            guardrails="principal_accounts,protected_sids",
        ),
    )
    assert isinstance(err, kpc.GuardrailViolationError)
    assert isinstance(err, kpc.PreconditionFailedError)  # existing handlers still catch it
    assert err.guardrails == ("principal_accounts", "protected_sids")
    assert err.violations == (
        kpc.GuardrailViolation(
            "policy",
            "Statement[1].Principal.AWS[1]",
            "account 999999999999 is not allowed",
            "GUARDRAIL_PRINCIPAL_ACCOUNTS",
            "principal_accounts",
        ),
        kpc.GuardrailViolation(
            "policy", "Statement", "'Admins' removed", "GUARDRAIL_PROTECTED_SIDS", "protected_sids"
        ),
    )
    assert all(isinstance(v, kpc.Violation) for v in err.violations)
    assert len(err.preconditions) == 3  # the detail as sent


def test_without_the_guardrails_metadata_the_names_come_from_the_violations() -> None:
    pre = error_details_pb2.PreconditionFailure()
    for name in ("public", "public", "restricted_actions"):
        pre.violations.add(type=f"guardrail/{name}", subject="Statement[0]", description="d")
    err = from_status(
        grpc.StatusCode.FAILED_PRECONDITION,
        "m",
        status(grpc.StatusCode.FAILED_PRECONDITION, "GUARDRAIL_VIOLATION", pre),
    )
    assert isinstance(err, kpc.GuardrailViolationError)
    assert err.guardrails == ("public", "restricted_actions")


def test_out_of_scope_names_the_caller_and_each_problem_with_its_path() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(
        field="policy",
        description="Statement[1].Sid: 'other' is not a Sid the caller owns",
        reason="OUT_OF_SCOPE",
    )
    bad.field_violations.add(
        field="policy", description="Statement: 'admins' removed", reason="OUT_OF_SCOPE"
    )
    err = from_status(
        grpc.StatusCode.PERMISSION_DENIED,
        "m",
        status(
            grpc.StatusCode.PERMISSION_DENIED,
            "OUT_OF_SCOPE",
            bad,
            caller="spiffe://cluster.local/ns/payments/sa/api",
            violationPaths=json.dumps(["Statement[1].Sid", "Statement"]),
        ),
    )
    assert isinstance(err, kpc.OutOfScopeError) and isinstance(err, kpc.PermissionDeniedError)
    assert err.caller == "spiffe://cluster.local/ns/payments/sa/api"
    assert err.violations == (
        kpc.Violation(
            "policy", "Statement[1].Sid", "'other' is not a Sid the caller owns", "OUT_OF_SCOPE"
        ),
        kpc.Violation("policy", "Statement", "'admins' removed", "OUT_OF_SCOPE"),
    )
