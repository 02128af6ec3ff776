"""The Python client against the real server: typed results, decoded errors, update_policy."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kms_policy_client import (
    EtagMismatchError,
    GuardrailViolation,
    GuardrailViolationError,
    InvalidRequestError,
    LockoutError,
    NotFoundError,
    OutOfScopeError,
    PermissionDeniedError,
    PolicyClient,
    PolicyClientSync,
    PreconditionFailedError,
    QuotaViolation,
    RateLimitedError,
    Resource,
    Severity,
    Violation,
)
from kms_policy_client._results import Finding
from kms_policy_service.ratelimit import Rate
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule

DECRYPT = {
    "Sid": "AppDecrypt",
    "Effect": "Allow",
    "Principal": {"AWS": ACCOUNT},
    "Action": "kms:Decrypt",
    "Resource": "*",
}
STRANGER = "999999999999"
# The sidecar's guardrails: its own account only, never public, the admins' statement kept.
GUARDRAILS = f"""
principal_accounts: ["{ACCOUNT}"]
public: deny
protected_sids: ["Enable IAM User Permissions"]
"""
# The sidecar's only caller (`local`), scoped to its own statements.
SCOPED = """
rules:
  - callers: ['local']
    actions: ['GetKeyPolicy', 'PutKeyPolicy', 'ValidateKeyPolicy']
    keys: ['*']
    scope: {sids: ['app-*']}
"""


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"key_write_rate_limit": None, **getattr(request, "param", {})}
    if values.get("authz_policy") == "READ_ONLY":
        authz = tmp_path / "authz.yaml"
        authz.write_text(
            "rules:\n  - callers: ['local']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
        )
        values["authz_policy"] = str(authz)
    if values.get("authz_policy") == "SCOPED":
        (tmp_path / "authz.yaml").write_text(SCOPED)
        values["authz_policy"] = str(tmp_path / "authz.yaml")
    if values.get("guardrails") == "SIDECAR":
        (tmp_path / "guardrails.yaml").write_text(GUARDRAILS)
        values["guardrails"] = str(tmp_path / "guardrails.yaml")
    return values


@pytest.fixture
async def client(service: RunningService) -> Any:
    async with PolicyClient(service.target) as c:
        yield c


async def test_get_put_list_and_validate_return_typed_results(
    client: PolicyClient, key: dict[str, Any]
) -> None:
    policy = await client.get_policy(key["KeyId"])
    assert (
        policy.key_arn == key["Arn"] and policy.policy_name == "default" and len(policy.etag) == 64
    )
    document = policy.document
    document["Statement"].append(DECRYPT)
    written = await client.put_policy(
        key["Arn"], document, etag=policy.etag
    )  # a dict is serialized for us
    assert written.etag != policy.etag
    assert (await client.get_policy(key["Arn"])).etag == written.etag
    assert await client.list_policies(key["Arn"]) == ["default"]
    result = await client.validate_policy(
        {"Version": "2012-10-17", "Statement": [{**DECRYPT, "Principal": "*"}]}
    )
    assert result.ok and [f.code for f in result.warnings] == ["PUBLIC_ACCESS"]
    assert result.findings[0].severity is Severity.WARNING


async def test_errors_are_decoded_into_the_hierarchy(
    client: PolicyClient, key: dict[str, Any]
) -> None:
    with pytest.raises(NotFoundError) as nf:
        await client.get_policy("alias/does-not-exist")
    assert nf.value.reason == "KEY_NOT_FOUND" and nf.value.request_id
    bad = {"Version": "2012-10-17", "Statement": [{**DECRYPT, "Principal": {"AWS": "nobody"}}]}
    with pytest.raises(InvalidRequestError) as invalid:
        await client.put_policy(key["Arn"], bad)
    violation, lockout_violation = invalid.value.violations  # every error in one answer
    assert (violation.field, violation.path, violation.reason) == (
        "policy",
        "Statement[0].Principal.AWS",
        "INVALID_PRINCIPAL",
    )
    assert lockout_violation.reason == "POLICY_LOCKOUT"
    lockout = {"Version": "2012-10-17", "Statement": [DECRYPT]}
    with pytest.raises(LockoutError) as locked:
        await client.put_policy(key["Arn"], lockout)
    assert isinstance(locked.value, InvalidRequestError) and locked.value.reason == "POLICY_LOCKOUT"
    with pytest.raises(EtagMismatchError) as stale:
        await client.put_policy(key["Arn"], policy_for(), etag="0" * 64)
    assert stale.value.current_etag == (await client.get_policy(key["Arn"])).etag


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "kms_rate_limits": {"GetKeyPolicy": Rate(1, 1)},
            "max_queue_wait": 0.0,
            "key_write_rate_limit": None,
        }
    ],
    indirect=True,
)
async def test_rate_limits_carry_retry_after_and_the_quota_that_refused(
    client: PolicyClient, kms: Any
) -> None:
    keys = [kms.create_key(Policy=policy_for())["KeyMetadata"]["Arn"] for _ in range(2)]
    await client.get_policy(keys[0])
    with pytest.raises(RateLimitedError) as limited:
        await client.get_policy(keys[1])
    assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 1.0
    (quota,) = limited.value.quota_violations
    assert isinstance(quota, QuotaViolation) and quota.subject == "operation:GetKeyPolicy"


async def test_a_violations_json_path_is_exact_even_where_a_json_key_holds_a_colon(
    client: PolicyClient, key: dict[str, Any]
) -> None:
    # "Weird: Op" looks like the end of a path to anyone splitting "path: description".
    document = json.loads(policy_for())
    document["Statement"][0]["Condition"] = {"Weird: Op": {"aws:SourceAccount": ACCOUNT}}
    found = await client.validate_policy(document, key_id=key["Arn"])
    with pytest.raises(InvalidRequestError) as invalid:
        await client.put_policy(key["Arn"], document)
    assert invalid.value.violations == tuple(
        Violation("policy", f.path, f.message, f.code) for f in found.errors
    )
    assert invalid.value.violations[0] == Violation(
        "policy",
        "Statement[0].Condition.Weird: Op",
        "'Weird: Op' is not a condition operator",
        "INVALID_CONDITION_OPERATOR",
    )


async def test_a_key_kms_no_longer_finds_is_named_as_the_resource(
    client: PolicyClient, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(Rule("GetKeyPolicy", "error", "NotFoundException"))  # deleted after DescribeKey
    with pytest.raises(NotFoundError) as nf:
        await client.get_policy(key["Arn"])
    assert nf.value.resource == Resource("kms-key", key["Arn"], "", "")


async def test_an_aws_managed_key_fails_its_precondition_with_the_violation(
    client: PolicyClient, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    managed = {"KeyId": key["KeyId"], "Arn": key["Arn"], "KeyManager": "AWS", "KeyState": "Enabled"}
    faults.add(Rule("DescribeKey", "reply", body={"KeyMetadata": managed}))
    with pytest.raises(PreconditionFailedError) as failed:
        await client.put_policy("alias/aws/ebs", policy_for())
    assert failed.value.reason == "AWS_MANAGED_KEY"
    (violation,) = failed.value.preconditions
    assert violation.subject and violation.type and violation.description


async def test_update_policy_retries_on_a_concurrent_change(
    client: PolicyClient, key: dict[str, Any]
) -> None:
    def add(sid: str) -> Any:
        def fn(doc: dict[str, Any]) -> dict[str, Any]:
            doc["Statement"].append({**DECRYPT, "Sid": sid})
            return doc

        return fn

    results = await asyncio.gather(
        *(client.update_policy(key["Arn"], add(f"S{i}")) for i in range(5))
    )
    assert len({r.etag for r in results}) == 5
    sids = {s.get("Sid") for s in (await client.get_policy(key["Arn"])).document["Statement"]}
    assert {f"S{i}" for i in range(5)} <= sids  # nobody's statement was lost


async def test_update_policy_gives_up_after_its_attempts(
    client: PolicyClient, key: dict[str, Any], kms: Any
) -> None:
    def meddle(doc: dict[str, Any]) -> dict[str, Any]:
        # Someone outside changes the key between our read and our write, every time.
        kms.put_key_policy(
            KeyId=key["KeyId"],
            PolicyName="default",
            Policy=policy_for(extra=[{**DECRYPT, "Sid": f"X{len(doc['Statement'])}"}]),
        )
        return doc

    with pytest.raises(EtagMismatchError):
        await client.update_policy(key["Arn"], meddle, attempts=2)


async def test_the_sync_twin_behaves_the_same(service: RunningService, key: dict[str, Any]) -> None:
    def use_sync() -> None:
        with PolicyClientSync(service.target) as sync:
            policy = sync.get_policy(key["Arn"])
            assert sync.list_policies(key["Arn"]) == ["default"]
            sync.update_policy(key["Arn"], lambda d: {**d, "Statement": [*d["Statement"], DECRYPT]})
            assert (
                json.loads(sync.get_policy(key["Arn"]).policy)["Statement"][-1]["Sid"]
                == "AppDecrypt"
            )
            assert (
                sync.put_policy(key["Arn"], policy.policy, validate_only=True).etag == policy.etag
            )
            with pytest.raises(NotFoundError):
                sync.get_policy("alias/does-not-exist")

    await asyncio.to_thread(use_sync)


@pytest.mark.parametrize("settings_overrides", [{"authz_policy": "READ_ONLY"}], indirect=True)
async def test_permission_denied_is_its_own_error(
    client: PolicyClient, key: dict[str, Any]
) -> None:
    with pytest.raises(PermissionDeniedError) as denied:
        await client.put_policy(key["Arn"], policy_for())
    assert denied.value.reason == "CALLER_NOT_AUTHORIZED"


def as_violations(findings: tuple[Finding, ...]) -> set[tuple[str, str, str]]:
    """ValidateKeyPolicy's errors as a Put's violations; lockout comes last on a Put."""
    return {(f.path, f.message, f.code) for f in findings if f.code != "POLICY_LOCKOUT"}


@pytest.mark.parametrize("settings_overrides", [{"guardrails": "SIDECAR"}], indirect=True)
async def test_a_guardrail_violation_is_its_own_error_with_each_problem_at_its_path(
    client: PolicyClient, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    document = json.loads(policy_for())
    del document["Statement"][0]  # the protected administrators' statement
    document["Statement"] += [
        {**DECRYPT, "Principal": {"AWS": [ACCOUNT, f"arn:aws:iam::{STRANGER}:root"]}},
        {**DECRYPT, "Sid": "Anyone", "Principal": "*"},
    ]
    found = await client.validate_policy(document, key_id=key["Arn"])
    faults.clear()
    with pytest.raises(GuardrailViolationError) as refused:
        await client.put_policy(key["Arn"], document, bypass_lockout_check=True)
    err = refused.value
    assert isinstance(err, PreconditionFailedError) and err.reason == "GUARDRAIL_VIOLATION"
    assert err.guardrails == ("principal_accounts", "protected_sids", "public")
    assert {(v.guardrail, v.path) for v in err.violations} == {
        ("principal_accounts", "Statement[0].Principal.AWS[1]"),
        ("public", "Statement[1].Principal"),
        ("protected_sids", "Statement"),
    }
    assert all(isinstance(v, GuardrailViolation) and v.field == "policy" for v in err.violations)
    # The same problems, at the same paths and with the same codes, as ValidateKeyPolicy's.
    assert {(v.path, v.description, v.reason) for v in err.violations} == as_violations(
        found.errors
    )
    assert "PutKeyPolicy" not in faults.kms_operations()


@pytest.mark.parametrize("settings_overrides", [{"authz_policy": "SCOPED"}], indirect=True)
async def test_out_of_scope_is_its_own_error_naming_the_caller_and_each_path(
    client: PolicyClient, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await client.put_policy(key["Arn"], policy_for(extra=[{**DECRYPT, "Sid": "app-decrypt"}]))
    document = json.loads(policy_for(extra=[{**DECRYPT, "Sid": "billing"}]))
    document["Statement"][0]["Action"] = "kms:Decrypt"  # not the caller's statement
    found = await client.validate_policy(document, key_id=key["Arn"])
    faults.clear()
    with pytest.raises(OutOfScopeError) as refused:
        await client.put_policy(key["Arn"], document, validate_only=True)
    err = refused.value
    assert isinstance(err, PermissionDeniedError) and err.reason == "OUT_OF_SCOPE"
    assert err.caller == "local"
    assert {(v.field, v.reason) for v in err.violations} == {("policy", "OUT_OF_SCOPE")}
    # The administrators' statement changed and "billing" added; removing its own is fine.
    assert [v.path for v in err.violations] == ["Statement[0].Sid", "Statement[1].Sid"]
    assert {(v.path, v.description, v.reason) for v in err.violations} == as_violations(
        found.errors
    )
    assert "PutKeyPolicy" not in faults.kms_operations()
