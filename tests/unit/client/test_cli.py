"""`kmspolicy` reports a refused policy with each violation and its path, in text and JSON."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import message
from google.rpc import error_details_pb2, status_pb2

import kms_policy_client as kpc
from kms_policy_client._cli import EXIT_CONFLICT, EXIT_DENIED, exit_code_for, report
from kms_policy_client._errors import from_status

CALLER = "spiffe://cluster.local/ns/payments/sa/api"


def refused(
    code: grpc.StatusCode, reason: str, detail: message.Message, **metadata: str
) -> kpc.PolicyError:
    s = status_pb2.Status(code=code.value[0], message="refused")
    s.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, metadata=metadata))
    s.details.add().Pack(detail)
    return from_status(code, "refused", s)


def guardrail_error() -> kpc.PolicyError:
    pre = error_details_pb2.PreconditionFailure()
    pre.violations.add(
        type="guardrail/principal_accounts",
        subject="Statement[1].Principal.AWS[1]",
        description="account 999999999999 is not allowed",
    )
    pre.violations.add(type="guardrail/public", subject="Statement[2].Principal", description="p")
    return refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDRAIL_VIOLATION",
        pre,
        guardrails="principal_accounts,public",
    )


def scope_error() -> kpc.PolicyError:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(
        field="policy", description="Statement[1].Sid: not yours", reason="OUT_OF_SCOPE"
    )
    return refused(
        grpc.StatusCode.PERMISSION_DENIED,
        "OUT_OF_SCOPE",
        bad,
        caller=CALLER,
        violationPaths='["Statement[1].Sid"]',
    )


def test_a_guardrail_violation_prints_each_problem_once_with_its_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = guardrail_error()
    report(err, "text")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "kmspolicy: FAILED_PRECONDITION [GUARDRAIL_VIOLATION]: refused",
        "  policy Statement[1].Principal.AWS[1]: account 999999999999 is not allowed"
        " (GUARDRAIL_PRINCIPAL_ACCOUNTS)",
        "  policy Statement[2].Principal: p (GUARDRAIL_PUBLIC)",
    ]
    assert exit_code_for(err) == EXIT_CONFLICT


def test_a_guardrail_violation_in_json_lists_the_guardrails_and_the_violations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report(guardrail_error(), "json")
    data = json.loads(capsys.readouterr().err)
    assert data["guardrails"] == ["principal_accounts", "public"]
    assert data["violations"][0] == {
        "field": "policy",
        "path": "Statement[1].Principal.AWS[1]",
        "description": "account 999999999999 is not allowed",
        "reason": "GUARDRAIL_PRINCIPAL_ACCOUNTS",
        "guardrail": "principal_accounts",
    }
    assert [v["path"] for v in data["violations"]] == [
        "Statement[1].Principal.AWS[1]",
        "Statement[2].Principal",
    ]
    assert data["preconditions"] == []  # not twice


def test_out_of_scope_prints_the_caller_and_each_problem_with_its_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = scope_error()
    report(err, "text")
    assert capsys.readouterr().err.splitlines() == [
        "kmspolicy: PERMISSION_DENIED [OUT_OF_SCOPE]: refused",
        f"  caller {CALLER}",
        "  policy Statement[1].Sid: not yours (OUT_OF_SCOPE)",
    ]
    assert exit_code_for(err) == EXIT_DENIED
    report(err, "json")
    data = json.loads(capsys.readouterr().err)
    assert data["caller"] == CALLER
    assert data["violations"] == [
        {
            "field": "policy",
            "path": "Statement[1].Sid",
            "description": "not yours",
            "reason": "OUT_OF_SCOPE",
        }
    ]
