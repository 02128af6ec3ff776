"""The error vocabulary and THE KMS table: row by row, and the Status it builds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from kms_policy_service import errors
from kms_policy_service.errors import KMS_ERROR_TABLE, from_kms_failure, kms_rule, to_status

DOCS = Path(__file__).parents[2] / "docs" / "errors.md"


@pytest.mark.parametrize(
    ("code", "operation", "status", "reason", "retryable"),
    [
        (
            "InvalidArnException",
            "GetKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_INVALID_ARN",
            False,
        ),
        (
            "MalformedPolicyDocumentException",
            "PutKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_MALFORMED_POLICY",
            False,
        ),
        (
            "ValidationException",
            "PutKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            False,
        ),
        (
            "LimitExceededException",
            "PutKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "POLICY_TOO_LARGE",
            False,
        ),
        (
            "LimitExceededException",
            "GetKeyPolicy",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "KMS_LIMIT_EXCEEDED",
            False,
        ),
        ("NotFoundException", "GetKeyPolicy", grpc.StatusCode.NOT_FOUND, "KEY_NOT_FOUND", False),
        (
            "KMSInvalidStateException",
            "PutKeyPolicy",
            grpc.StatusCode.FAILED_PRECONDITION,
            "KMS_INVALID_STATE",
            False,
        ),
        (
            "UnsupportedOperationException",
            "PutKeyPolicy",
            grpc.StatusCode.FAILED_PRECONDITION,
            "KMS_UNSUPPORTED_OPERATION",
            False,
        ),
        (
            "AccessDeniedException",
            "PutKeyPolicy",
            grpc.StatusCode.PERMISSION_DENIED,
            "KMS_ACCESS_DENIED",
            False,
        ),
        (
            "ThrottlingException",
            "GetKeyPolicy",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "KMS_THROTTLED",
            True,
        ),
        (
            "DependencyTimeoutException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            True,
        ),
        (
            "KMSInternalException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            True,
        ),
        (
            errors.CONNECTION_ERROR,
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            True,
        ),
        (errors.READ_TIMEOUT, "GetKeyPolicy", grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", True),
        (
            errors.CREDENTIALS_MISSING,
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        (
            "ExpiredTokenException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        (
            "UnrecognizedClientException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        (
            "InvalidSignatureException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        ("RequestExpired", "GetKeyPolicy", grpc.StatusCode.UNAVAILABLE, "KMS_CLOCK_SKEW", False),
        (
            "OptInRequired",
            "PutKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_OPT_IN_REQUIRED",
            False,
        ),
        (
            "InvalidAction",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_ENDPOINT_MISCONFIGURED",
            False,
        ),
        (
            "NotAuthorized",
            "PutKeyPolicy",
            grpc.StatusCode.PERMISSION_DENIED,
            "KMS_ACCESS_DENIED",
            False,
        ),
        (
            "ValidationError",
            "PutKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            False,
        ),
        (
            "InvalidParameterValue",
            "PutKeyPolicy",
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            False,
        ),
        ("MissingParameter", "GetKeyPolicy", grpc.StatusCode.INTERNAL, "INTERNAL", False),
        (
            "RequestTimeoutException",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            True,
        ),
        (
            "IncompleteSignature",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        (
            "InvalidClientTokenId",
            "GetKeyPolicy",
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            False,
        ),
        ("SomethingNewException", "GetKeyPolicy", grpc.StatusCode.INTERNAL, "INTERNAL", False),
    ],
)
def test_kms_error_table_rows(
    code: str, operation: str, status: grpc.StatusCode, reason: str, retryable: bool
) -> None:
    rule = kms_rule(code, operation)
    assert (rule.error.code, rule.reason, rule.retryable) == (status, reason, retryable)


def test_an_unknown_code_with_a_5xx_is_unavailable() -> None:
    assert kms_rule("", "GetKeyPolicy", 502).error is errors.Unavailable


def test_credentials_failures_never_blame_the_caller() -> None:
    for code, rules in KMS_ERROR_TABLE.items():
        for rule in rules:
            assert rule.error is not errors.Unauthenticated, code


@pytest.mark.parametrize("code", ["AccessDeniedException", "NotAuthorized"])
def test_access_denied_does_not_leak_the_service_role(code: str) -> None:
    err = from_kms_failure(
        code,
        "User: arn:aws:sts::1:assumed-role/secret-role/x is not authorized",
        operation="PutKeyPolicy",
    )
    assert "secret-role" not in err.message


def test_the_operators_problems_say_so_and_when_to_come_back() -> None:
    for code in ("RequestExpired", "OptInRequired", "InvalidAction", "ExpiredTokenException"):
        err = from_kms_failure(code, "KMS's own text", operation="GetKeyPolicy")
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert "operator" in err.message and "KMS's own text" not in err.message
        assert err.retry_after is not None


def test_status_carries_exactly_one_error_info_and_matching_message() -> None:
    err = errors.ResourceExhausted(
        "slow down",
        reason="RATE_LIMITED",
        metadata={"keyArn": "arn"},
        retry_after=1.5,
        quota_violations=[errors.QuotaViolation("operation:PutKeyPolicy", "5/s")],
        field_violations=[errors.FieldViolation("policy", "bad", path="Statement[0]")],
    )
    status = to_status(err, request_id="r1")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "RATE_LIMITED",
        "kmspolicy.v1",
        {"keyArn": "arn", "requestId": "r1", "violationPaths": '["Statement[0]"]'},
    )
    retry = error_details_pb2.RetryInfo()
    next(d for d in status.details if d.Is(retry.DESCRIPTOR)).Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000
    bad = error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    assert bad.field_violations[0].description == "Statement[0]: bad"


def metadata_and_violations(
    err: errors.ServiceError,
) -> tuple[dict[str, str], list[error_details_pb2.BadRequest.FieldViolation]]:
    status = to_status(err)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    next(d for d in status.details if d.Is(info.DESCRIPTOR)).Unpack(info)
    next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
    return dict(info.metadata), list(bad.field_violations)


def test_each_violations_json_path_travels_in_violation_paths_in_order() -> None:
    err = errors.InvalidArgument(
        "bad",
        field_violations=[
            errors.FieldViolation("policy", "bad effect", path="Statement[0].Effect"),
            errors.FieldViolation("policy", "no statement"),  # the whole document
            errors.FieldViolation("policy", "odd", path="Statement[1].Condition.Weird: Op"),
        ],
    )
    metadata, violations = metadata_and_violations(err)
    paths = json.loads(metadata["violationPaths"])
    assert paths == ["Statement[0].Effect", "", "Statement[1].Condition.Weird: Op"]
    assert [v.description for v in violations] == [  # unchanged, for older clients
        "Statement[0].Effect: bad effect",
        "no statement",
        "Statement[1].Condition.Weird: Op: odd",
    ]


def test_violation_paths_stay_aligned_when_violations_are_cut() -> None:
    many = [
        errors.FieldViolation("policy", "x" * 400, path=f"Statement[{i}].Action") for i in range(60)
    ]
    metadata, violations = metadata_and_violations(
        errors.InvalidArgument("bad", field_violations=many)
    )
    paths = json.loads(metadata["violationPaths"])
    assert violations[-1].reason == errors.TOO_MANY_FINDINGS
    assert len(paths) == len(violations) and paths[-1] == ""
    assert paths[:-1] == [f"Statement[{i}].Action" for i in range(len(violations) - 1)]


def test_violation_paths_are_sent_only_where_a_violation_has_a_path() -> None:
    plain = errors.InvalidArgument("bad", field_violations=[errors.FieldViolation("key_id", "x")])
    assert "violationPaths" not in metadata_and_violations(plain)[0]


def test_reasons_are_upper_snake_and_metadata_keys_camel_case() -> None:
    for rules in KMS_ERROR_TABLE.values():
        for rule in rules:
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", rule.reason)
    err = from_kms_failure("NotFoundException", "x", operation="GetKeyPolicy", key_arn="a")
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", k) for k in err.metadata)


def documented_rows() -> set[tuple[str, str, str, str, str]]:
    """Rows of the generated KMS table in docs/errors.md."""
    text = DOCS.read_text()
    start = text.index("<!-- kms-table:start -->")
    end = text.index("<!-- kms-table:end -->")
    rows = set()
    for line in text[start:end].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("KMS error code", "---"):
            rows.add((cells[0], cells[1], cells[2], cells[3], cells[4]))
    return rows


def test_docs_table_matches_the_error_table() -> None:
    expected = {
        (
            code,
            ", ".join(sorted(rule.operations)) or "any",
            rule.error.code.name,
            rule.reason,
            "yes" if rule.retryable else "no",
        )
        for code, rules in KMS_ERROR_TABLE.items()
        for rule in rules
    }
    assert documented_rows() == expected


def test_every_reason_and_finding_code_in_the_code_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (Path(__file__).parents[2] / "service").rglob("*.py"))
    codes = set(re.findall(r'"((?:[A-Z0-9]+_)+[A-Z0-9]+)"', source))
    codes |= {
        "OVERLOADED",
        "UNAUTHENTICATED",
        "MISSING_PRINCIPAL",
        "MISSING_ACTION",
        "MISSING_RESOURCE",
        "INVALID_RESOURCE",
    }
    not_codes = {
        "AWS_DATA_PATH",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_RAM",
        "DEFAULT_KEY_WRITE_RATE",
        "DEFAULT_OPERATION_RATES",
        "KEY_MANAGER",
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
    }
    documented = DOCS.read_text()
    missing = sorted(c for c in codes - not_codes if f"`{c}`" not in documented)
    assert missing == []
