"""The lockout safety check: who counts as the service, what counts as an Allow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kms_policy_service.validation import ServicePrincipal, lockout_findings

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/kms-policy-service"
SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/kms-policy-service/botocore-session-1"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SEED = json.loads((Path(__file__).parents[2] / "fixtures" / "seed_policy.json").read_text())
ME = ServicePrincipal.from_caller_identity(ACCOUNT, SESSION)


def allow(principal: Any, action: Any = "kms:PutKeyPolicy", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": principal, "Action": action, "Resource": "*", **extra}


def deny(principal: Any, action: Any = "kms:PutKeyPolicy", **extra: Any) -> dict[str, Any]:
    return {**allow(principal, action, **extra), "Effect": "Deny"}


def codes(*statements: dict[str, Any]) -> list[str]:
    doc = {"Version": "2012-10-17", "Statement": list(statements)}
    return [f.code for f in lockout_findings(doc, ME, KEY)]


def test_an_assumed_role_session_maps_to_its_role() -> None:
    assert ME.arn == ROLE


@pytest.mark.parametrize(
    "principal",
    [
        "*",
        {"AWS": "*"},
        {"AWS": ACCOUNT},
        {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        {"AWS": ROLE},
        {"AWS": ["arn:aws:iam::111122223333:root", ROLE]},
        {
            "AWS": f"arn:aws:iam::{ACCOUNT}:role/eks/irsa/kms-policy-service"
        },  # the role, with its path
    ],
)
def test_principals_that_name_the_service(principal: Any) -> None:
    assert codes(allow(principal)) == []


@pytest.mark.parametrize(
    "action", ["kms:*", "*", "kms:Put*", "KMS:putkeypolicy", ["kms:Decrypt", "kms:PutKey*"]]
)
def test_wildcard_actions_count(action: Any) -> None:
    assert codes(allow({"AWS": ROLE}, action)) == []


def test_not_action_that_spares_put_key_policy_counts() -> None:
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": ROLE},
        "NotAction": "kms:Decrypt",
        "Resource": "*",
    }
    assert codes(statement) == []


@pytest.mark.parametrize(
    "statements",
    [
        [allow({"AWS": "arn:aws:iam::111122223333:root"})],
        [allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/kms-policy-service-other"})],
        [allow({"AWS": "arn:aws:iam::111122223333:role/kms-policy-service"})],
        [allow({"AWS": ROLE}, "kms:GetKeyPolicy")],
        [allow({"AWS": ROLE}, Condition={"Bool": {"aws:MultiFactorAuthPresent": "true"}})],
        [allow({"AWS": ROLE}), deny({"AWS": ROLE})],
        [allow({"AWS": ACCOUNT}), deny("*", "kms:Put*")],
        [{**allow({"AWS": ROLE}), "Resource": "arn:aws:kms:us-east-1:123456789012:key/other"}],
    ],
)
def test_policies_that_lock_the_service_out(statements: list[dict[str, Any]]) -> None:
    assert codes(*statements) == ["POLICY_LOCKOUT"]


def test_a_conditional_deny_warns_but_does_not_lock_out() -> None:
    assert codes(
        allow({"AWS": ROLE}),
        deny({"AWS": ROLE}, Condition={"Bool": {"aws:SecureTransport": "false"}}),
    ) == ["LOCKOUT_RISK"]


def test_the_seed_policy_locks_out_another_account() -> None:
    findings = list(lockout_findings(SEED, ME, KEY))
    assert [f.code for f in findings] == ["POLICY_LOCKOUT"]
    assert ROLE in findings[0].message


def test_the_seed_policy_passes_for_its_own_account() -> None:
    me = ServicePrincipal.from_caller_identity(
        "111122223333", "arn:aws:iam::111122223333:user/ExampleAdminUser"
    )
    assert list(lockout_findings(SEED, me, KEY.replace(ACCOUNT, "111122223333"))) == []


def test_a_not_principal_deny_naming_only_the_role_or_account_still_locks_the_session_out() -> None:
    from kms_policy_service.validation.lockout import ServicePrincipal, lockout_findings

    me = ServicePrincipal.from_caller_identity(
        "123456789012", "arn:aws:sts::123456789012:assumed-role/kms-policy-service/pod-1"
    )
    root = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    for listed in (
        ["arn:aws:iam::123456789012:role/kms-policy-service", "123456789012"],
        ["arn:aws:iam::123456789012:role/kms-policy-service"],
    ):
        deny = {
            "Effect": "Deny",
            "NotPrincipal": {"AWS": listed},
            "Action": "kms:*",
            "Resource": "*",
        }
        codes = [f.code for f in lockout_findings({"Statement": [root, deny]}, me, None)]
        assert "POLICY_LOCKOUT" in codes
    exact = {
        "Effect": "Deny",
        "NotPrincipal": {"AWS": [me.session_arn]},
        "Action": "kms:*",
        "Resource": "*",
    }
    assert not [
        f
        for f in lockout_findings({"Statement": [root, exact]}, me, None)
        if f.code == "POLICY_LOCKOUT"
    ]
