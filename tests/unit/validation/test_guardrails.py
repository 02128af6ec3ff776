"""Guardrails as pure functions: the cases a hostile caller tries, and the file format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kms_policy_service.validation.guardrails import Guardrails, GuardrailsError

ACCOUNT = "123456789012"
SERVICE = f"arn:aws:iam::{ACCOUNT}:role/kms-policy-service"
ADMINS = {
    "Sid": "KeyAdministrators",
    "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/kms-admin"},
    "Action": "kms:*",
    "Resource": "*",
}
ROOT = {
    "Sid": "Enable IAM User Permissions",
    "Effect": "Allow",
    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
    "Action": "kms:*",
    "Resource": "*",
}
GUARDRAILS = Guardrails.parse(
    json.dumps(
        {
            "principal_accounts": [ACCOUNT],
            "protected_sids": ["KeyAdministrators", "Enable IAM User Permissions"],
            "lockout_bypass": "deny",
        }
    )
)
CURRENT = {"Version": "2012-10-17", "Statement": [ROOT, ADMINS]}


def with_extra(*statements: dict[str, Any], version: str = "2012-10-17") -> dict[str, Any]:
    return {"Version": version, "Statement": [ROOT, ADMINS, *statements]}


def names(document: dict[str, Any], **kw: Any) -> list[tuple[str, str]]:
    return [(v.guardrail, v.path) for v in GUARDRAILS.violations(document, CURRENT, **kw)]


DENY_ALL = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"}


@pytest.mark.parametrize(
    ("statement", "path"),
    [
        (
            {
                "Effect": "Deny",
                "NotPrincipal": {"AWS": [SERVICE, f"arn:aws:iam::{ACCOUNT}:root"]},
                "Action": "kms:*",
                "Resource": "*",
            },
            "Statement[2]",
        ),
        (
            DENY_ALL | {"Condition": {"StringNotEquals": {"aws:PrincipalArn": SERVICE}}},
            "Statement[2]",
        ),
        (DENY_ALL, "Statement[2]"),
        (
            {
                "Effect": "Deny",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/kms-admin"},
                "Action": "kms:PutKeyPolicy",
                "Resource": "*",
            },
            "Statement[2]",
        ),
    ],
    ids=["not-principal", "conditional-star", "star", "the-admin-by-name"],
)
def test_a_deny_that_switches_a_protected_statement_off_is_refused(
    statement: dict[str, Any], path: str
) -> None:
    assert ("protected_sids", path) in names(with_extra(statement))


def test_a_deny_elsewhere_is_fine() -> None:
    other = {
        "Effect": "Deny",
        "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    assert names(with_extra(other)) == []


def test_changing_version_under_protected_statements_is_refused() -> None:
    assert names(with_extra(version="2008-10-17")) == [("protected_sids", "Version")]


def test_the_lockout_bypass_can_be_forbidden() -> None:
    assert names(with_extra(), bypass_lockout_check=True) == [("lockout_bypass", "")]
    assert names(with_extra()) == []


@pytest.mark.parametrize(
    ("condition", "accepted"),
    [
        ({"StringEquals": {"kms:CallerAccount": ACCOUNT}}, True),
        ({"StringEquals": {"kms:CallerAccount": "${aws:PrincipalAccount}"}}, False),
        (
            {"StringEquals": {"kms:CallerAccount": ACCOUNT, "KMS:CallerAccount": "999999999999"}},
            False,
        ),
        ({"StringEqualsIfExists": {"kms:CallerAccount": ACCOUNT}}, False),
        ({"ForAnyValue:StringEquals": {"kms:CallerAccount": ACCOUNT}}, False),
    ],
    ids=["account", "policy-variable", "two-spellings", "if-exists", "for-any-value"],
)
def test_public_conditional_needs_a_condition_that_restricts(
    condition: dict[str, Any], accepted: bool
) -> None:
    public = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": condition,
    }
    refused = ("public", "Statement[2].Principal") in names(with_extra(public))
    assert refused is not accepted


def test_an_account_id_is_twelve_ascii_digits() -> None:
    Guardrails.parse('principal_accounts: ["222222222222"]')
    for bad in ("22222222222", "\u0662" * 12, "\uff12" * 12):
        with pytest.raises(GuardrailsError, match="not a 12-digit account ID"):
            Guardrails.parse(f'principal_accounts: ["{bad}"]')


def test_the_file_names_an_unknown_key_and_a_bad_mode() -> None:
    with pytest.raises(GuardrailsError, match="unknown key 'deny'"):
        Guardrails.parse("deny: [everything]")
    with pytest.raises(GuardrailsError, match="lockout_bypass must be"):
        Guardrails.parse("lockout_bypass: sometimes")


ROLE = f"arn:aws:iam::{ACCOUNT}:role/kms-admin"


@pytest.mark.parametrize(
    ("protected", "deny_principal"),
    [
        ("KeyAdministrators", {"NotPrincipal": {"AWS": [ROLE]}}),
        ("KeyAdministrators", {"NotPrincipal": {"AWS": [ROLE, ACCOUNT]}}),
        (
            "KeyAdministrators",
            {"Principal": {"AWS": f"arn:aws:sts::{ACCOUNT}:assumed-role/kms-admin/alice"}},
        ),
        ("Enable IAM User Permissions", {"Principal": {"AWS": ROLE}}),
        (
            "Enable IAM User Permissions",
            {"Principal": {"AWS": f"arn:aws:sts::{ACCOUNT}:assumed-role/kms-admin/s"}},
        ),
    ],
    ids=[
        "not-principal-role",
        "not-principal-role-and-account",
        "admin-session",
        "role-under-root",
        "session-under-root",
    ],
)
def test_a_deny_on_what_a_protected_statement_stands_for_is_refused(
    protected: str, deny_principal: dict[str, Any]
) -> None:
    guardrails = Guardrails.parse(json.dumps({"protected_sids": [protected]}))
    deny = {"Sid": "X", "Effect": "Deny", "Action": "kms:*", "Resource": "*", **deny_principal}
    found = guardrails.violations(with_extra(deny), CURRENT)
    assert [(v.guardrail, v.path) for v in found] == [("protected_sids", "Statement[2]")]


def test_a_deny_already_in_the_policy_does_not_make_it_unchangeable() -> None:
    keep_mfa = {
        "Sid": "DenyDeletion",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "kms:ScheduleKeyDeletion",
        "Resource": "*",
        "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}},
    }
    guardrails = Guardrails.parse(
        json.dumps(
            {"protected_sids": ["KeyAdministrators", "Enable IAM User Permissions", "DenyDeletion"]}
        )
    )
    current = with_extra(keep_mfa)
    harmless = {
        "Sid": "App",
        "Effect": "Allow",
        "Principal": {"AWS": ACCOUNT},
        "Action": "kms:Decrypt",
    }
    assert guardrails.violations(current, current) == []
    assert guardrails.violations(with_extra(keep_mfa, harmless | {"Resource": "*"}), current) == []
