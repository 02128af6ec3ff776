"""Authorization rules: parsing, matching, reload keeping the old rules on a bad file."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from kms_policy_service.authz import Authorizer, AuthzPolicy, AuthzPolicyError

POLICY = """
rules:
  - callers: ["spiffe://cluster.local/ns/payments/sa/*"]
    actions: ["GetKeyPolicy", "ListKeyPolicies", "ValidateKeyPolicy"]
    keys: ["arn:aws:kms:*:123456789012:key/*", "alias/payments-*"]
  - callers: ["local"]
    actions: ["*"]
    keys: ["*"]
"""


def test_rules_match_callers_actions_and_keys_by_glob() -> None:
    policy = AuthzPolicy.parse(POLICY)
    api = "spiffe://cluster.local/ns/payments/sa/api"
    assert policy.allows(api, "GetKeyPolicy", ("alias/payments-db",))
    assert policy.allows(api, "GetKeyPolicy", ("arn:aws:kms:us-east-1:123456789012:key/k",))
    assert not policy.allows(api, "PutKeyPolicy", ("alias/payments-db",))
    assert not policy.allows(api, "GetKeyPolicy", ("alias/other",))
    assert not policy.allows(
        "spiffe://cluster.local/ns/other/sa/api", "GetKeyPolicy", ["alias/payments-db"]
    )
    assert policy.allows("local", "PutKeyPolicy", ("anything",))
    assert policy.may_act(api, "ListKeyPolicies") and not policy.may_act(api, "PutKeyPolicy")


def test_json_is_accepted() -> None:
    policy = AuthzPolicy.parse('{"rules": [{"callers": ["a"], "actions": "*", "keys": ["*"]}]}')
    assert policy.allows("a", "PutKeyPolicy", ("k",))


@pytest.mark.parametrize(
    "text",
    [
        "rules: nope",
        "[]",
        "rules:\n  - callers: []\n    actions: ['*']\n    keys: ['*']",
        "rules:\n  - callers: ['a']\n    actions: ['Encrypt']\n    keys: ['*']",
        "rules:\n  - callers: ['a']\n    actions: ['*']",
        "rules:\n  - callers: ['a']\n    actions: ['*']\n    keys: ['*']\n    extra: 1",
        "rules: [\n",
    ],
)
def test_malformed_policies_are_refused_with_a_location(text: str) -> None:
    with pytest.raises(AuthzPolicyError):
        AuthzPolicy.parse(text)


def test_a_bad_file_on_reload_keeps_the_previous_rules(tmp_path: Path) -> None:
    path = tmp_path / "authz.yaml"
    path.write_text(POLICY)
    authz = Authorizer(path)
    path.write_text("rules: [broken")
    assert not authz.reload()
    assert authz.policy.allows("local", "PutKeyPolicy", ("k",))
    path.write_text("rules:\n  - callers: ['other']\n    actions: ['*']\n    keys: ['*']\n")
    assert authz.reload_if_changed()
    assert not authz.policy.allows("local", "PutKeyPolicy", ("k",))


def test_without_a_file_everything_is_allowed_and_identity_is_optional() -> None:
    authz = Authorizer(None)
    assert not authz.required and authz.policy.allows("anyone", "PutKeyPolicy", ("k",))


def test_globs_know_only_star_and_question_mark_and_compile_nothing() -> None:
    policy = AuthzPolicy.parse(
        'rules: [{callers: ["spiffe://td/sa/[ab]", "svc-?"], actions: "*", keys: ["alias/x-[*"]}]'
    )
    before = fnmatch._compile_pattern.cache_info()  # type: ignore[attr-defined]
    assert not policy.may_act("spiffe://td/sa/a", "GetKeyPolicy")  # no character classes
    assert policy.allows("spiffe://td/sa/[ab]", "GetKeyPolicy", ("alias/x-[1]",))
    assert policy.allows("svc-1", "GetKeyPolicy", ("alias/x-[",))
    assert not policy.may_act("svc-12", "GetKeyPolicy")
    for i in range(50):  # caller-chosen key names are matched, never compiled
        policy.allows("svc-1", "GetKeyPolicy", (f"alias/unique-{i}",))
    assert fnmatch._compile_pattern.cache_info() == before  # type: ignore[attr-defined]
