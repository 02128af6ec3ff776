"""Scopes as pure functions: what is judged, and that a hostile statement costs one
expansion per distinct pattern (not per pattern times KMS action times scope pattern)."""

from __future__ import annotations

from typing import Any

import pytest

from kms_policy_service.validation import grants as grants_module
from kms_policy_service.validation import scopes as scopes_module
from kms_policy_service.validation.scopes import Scope

ROLE = "arn:aws:iam::123456789012:role/payments-api"
SCOPE = Scope(
    sids=("payments-*",),
    principals=("arn:aws:iam::123456789012:role/payments-*",),
    actions=("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"),
)
EMPTY: dict[str, Any] = {"Version": "2012-10-17", "Statement": []}


def doc(actions: Any, sid: str = "payments-big") -> dict[str, Any]:
    statement = {"Sid": sid, "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": actions}
    return {"Version": "2012-10-17", "Statement": [statement | {"Resource": "*"}]}


@pytest.mark.parametrize(
    ("actions", "outside"),
    [
        ("kms:GenerateDataKey*", False),
        ("kms:generatedatakeywithoutplaintext", False),
        ("kms:Gen*", True),
        ("kms:*", True),
        ("*", True),
    ],
)
def test_an_action_is_within_when_every_kms_action_it_names_is(actions: str, outside: bool) -> None:
    assert bool(SCOPE.findings(doc(actions), EMPTY)) == outside


def test_five_thousand_copies_of_a_pattern_are_expanded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real = grants_module.actions_matched

    def counting(pattern: str) -> frozenset[str]:
        nonlocal calls
        calls += 1
        return real(pattern)

    monkeypatch.setattr(grants_module, "actions_matched", counting)
    monkeypatch.setattr(scopes_module, "actions_matched", counting)
    findings = SCOPE.findings(doc(["*"] * 5000), EMPTY)
    assert [f.path for f in findings] == ["Statement[0].Action[0]"]
    assert calls <= 2  # once for what the statement grants, once for the scope check


def test_a_service_star_principal_is_everyone() -> None:
    statement = {"Effect": "Allow", "Principal": {"Service": "*"}, "Action": "kms:Decrypt"}
    (g,) = grants_module.grants({"Statement": [statement | {"Resource": "*"}]})
    assert g.everyone


def test_a_deny_on_everyone_is_never_within_a_scope_without_principals() -> None:
    scope = Scope(sids=("payments-*",), actions=("kms:Decrypt", "kms:Encrypt"))
    deny = {
        "Sid": "payments-deny",
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["kms:Decrypt", "kms:Encrypt"],
        "Resource": "*",
    }
    findings = scope.findings({"Version": "2012-10-17", "Statement": [deny]}, EMPTY)
    assert [f.path for f in findings] == ["Statement[0].Principal"]
