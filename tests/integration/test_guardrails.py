"""Guardrails through the real server: what no key policy may contain, whoever writes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of
from tests.support.waiting import until

OTHER = "111122223333"
STRANGER = "999999999999"
ADMIN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/kms-admin"
GUARDRAILS = f"""
principal_accounts: ["{ACCOUNT}", "{OTHER}"]
org_ids: ["o-a1b2c3d4e5"]
public: conditional
protected_sids: ["Enable IAM User Permissions", "KeyAdministrators"]
restricted_actions:
  actions: ["kms:PutKeyPolicy", "kms:CreateGrant", "kms:ScheduleKeyDeletion", "kms:DisableKey"]
  principals: ["arn:aws:iam::{ACCOUNT}:root", "{ADMIN_ROLE}"]
"""


@pytest.fixture
def guardrails_file(tmp_path: Path) -> Path:
    path = tmp_path / "guardrails.yaml"
    path.write_text(GUARDRAILS)
    return path


@pytest.fixture
def settings_overrides(guardrails_file: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "guardrails": str(guardrails_file),
        "authz_reload_interval": 0.1,
        "key_write_rate_limit": None,
        "audit_log": str(tmp_path / "audit.log"),
    }


def with_statement(statement: dict[str, Any]) -> str:
    return policy_for(extra=[statement])


def allow(principal: Any, action: Any = "kms:Decrypt", **extra: Any) -> dict[str, Any]:
    return {"Sid": "App", "Effect": "Allow", "Principal": principal, "Action": action} | {
        "Resource": "*",
        **extra,
    }


# (name, statement, refused at path) - refused cases name the guardrail; None passes.
CASES: list[tuple[str, dict[str, Any], tuple[str, str] | None]] = [
    ("own account role", allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}), None),
    ("listed account", allow({"AWS": OTHER}), None),
    ("service principal", allow({"Service": "logs.amazonaws.com"}), None),
    (
        "other account",
        allow({"AWS": [f"arn:aws:iam::{ACCOUNT}:role/app", f"arn:aws:iam::{STRANGER}:root"]}),
        ("principal_accounts", "Statement[1].Principal.AWS[1]"),
    ),
    (
        "sts session elsewhere",
        allow({"AWS": f"arn:aws:sts::{STRANGER}:assumed-role/r/s"}),
        ("principal_accounts", "Statement[1].Principal.AWS"),
    ),
    (
        "deny to anyone is fine",
        {
            "Sid": "D",
            "Effect": "Deny",
            "Principal": {"AWS": [STRANGER, f"arn:aws:sts::{STRANGER}:assumed-role/r/s"]},
            "Action": "kms:*",
            "Resource": "*",
        },
        None,
    ),
    ("public without condition", allow("*"), ("public", "Statement[1].Principal")),
    ("public AWS star", allow({"AWS": "*"}), ("public", "Statement[1].Principal")),
    ("public Service star", allow({"Service": "*"}), ("public", "Statement[1].Principal")),
    (
        "public with account condition",
        allow("*", Condition={"StringEquals": {"kms:CallerAccount": ACCOUNT}}),
        None,
    ),
    (
        "public with condition key in another case",
        allow("*", Condition={"StringEquals": {"AWS:PrincipalOrgID": "o-a1b2c3d4e5"}}),
        None,
    ),
    (
        "public with a stranger's account",
        allow("*", Condition={"StringEquals": {"kms:CallerAccount": [ACCOUNT, STRANGER]}}),
        ("public", "Statement[1].Principal"),
    ),
    (
        "public with IfExists (passes when absent)",
        allow("*", Condition={"StringEqualsIfExists": {"kms:CallerAccount": ACCOUNT}}),
        ("public", "Statement[1].Principal"),
    ),
    (
        "NotPrincipal is public",
        {
            "Sid": "NP",
            "Effect": "Allow",
            "NotPrincipal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/x"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
        ("public", "Statement[1].NotPrincipal"),
    ),
    (
        "restricted action to the admin role",
        allow({"AWS": ADMIN_ROLE}, "kms:PutKeyPolicy"),
        None,
    ),
    (
        "restricted action by wildcard",
        allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, "KMS:put*"),
        ("restricted_actions", "Statement[1].Principal.AWS"),
    ),
    (
        "restricted action through NotAction",
        {
            "Sid": "NA",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"},
            "NotAction": "kms:Decrypt",
            "Resource": "*",
        },
        ("restricted_actions", "Statement[1].Principal.AWS"),
    ),
    (
        "restricted action by kms:*",
        allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, "kms:*"),
        ("restricted_actions", "Statement[1].Principal.AWS"),
    ),
]


@pytest.mark.parametrize(("name", "statement", "refused"), CASES, ids=[c[0] for c in CASES])
async def test_each_guardrail_through_put_and_validate(
    service: RunningService,
    faults: KmsFaultInjector,
    key: dict[str, Any],
    name: str,
    statement: dict[str, Any],
    refused: tuple[str, str] | None,
) -> None:
    policy = with_statement(statement)
    faults.clear()
    validated = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(key_id=key["Arn"], policy=policy)
    )
    errors = {
        (f.code, f.path) for f in validated.findings if f.severity == pb.Finding.SEVERITY_ERROR
    }
    if refused is None:
        assert errors == set()
        await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy))
        assert "PutKeyPolicy" in faults.kms_operations()
        return
    guardrail, path = refused
    assert (f"GUARDRAIL_{guardrail.upper()}", path) in errors
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDRAIL_VIOLATION",
    )
    assert guardrail in details.error_info.metadata["guardrails"].split(",")
    assert details.precondition_failure is not None
    violations = {(v.type, v.subject) for v in details.precondition_failure.violations}
    assert (f"guardrail/{guardrail}", path) in violations
    assert "PutKeyPolicy" not in faults.kms_operations()


async def test_a_protected_statement_cannot_be_removed_or_changed_but_may_be_added(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    doc = json.loads(policy_for())
    doc["Statement"][0]["Action"] = ["kms:Decrypt", "kms:PutKeyPolicy"]  # changed
    faults.clear()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=json.dumps(doc))
        )
    details = details_of(caught.value)
    assert details.reason == "GUARDRAIL_VIOLATION"
    assert details.precondition_failure is not None
    assert [(v.type, v.subject) for v in details.precondition_failure.violations] == [
        ("guardrail/protected_sids", "Statement[0]")
    ]
    assert "PutKeyPolicy" not in faults.kms_operations()
    # Adding KeyAdministrators (absent today) is allowed.
    admins = {
        "Sid": "KeyAdministrators",
        "Effect": "Allow",
        "Principal": {"AWS": ADMIN_ROLE},
        "Action": "kms:*",
        "Resource": "*",
    }
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[admins]))
    )
    # ...and now removing it is refused, with the path `Statement`.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for())
        )
    removed = details_of(caught.value).precondition_failure
    assert removed is not None
    assert [(v.type, v.subject) for v in removed.violations] == [
        ("guardrail/protected_sids", "Statement")
    ]


async def test_validate_without_a_key_judges_everything_but_protected_sids(
    service: RunningService,
) -> None:
    reply = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(policy=with_statement(allow({"AWS": STRANGER})))
    )
    assert [(f.code, f.path) for f in reply.findings if f.code.startswith("GUARDRAIL")] == [
        ("GUARDRAIL_PRINCIPAL_ACCOUNTS", "Statement[1].Principal.AWS")
    ]


async def test_the_guardrails_apply_to_validate_only_and_bypass_too(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    for flags in ({"validate_only": True}, {"bypass_policy_lockout_safety_check": True}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.PutKeyPolicy(
                pb.PutKeyPolicyRequest(
                    key_id=key["Arn"], policy=with_statement(allow("*")), **flags
                )
            )
        assert details_of(caught.value).reason == "GUARDRAIL_VIOLATION"
    assert "PutKeyPolicy" not in faults.kms_operations()


async def test_a_refused_attempt_is_audited_with_its_violations(
    service: RunningService, key: dict[str, Any], settings_overrides: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=with_statement(allow("*")))
        )
    lines = Path(settings_overrides["audit_log"]).read_text().splitlines()
    refused = [json.loads(line) for line in lines if '"refused"' in line]
    assert refused[-1]["reason"] == "GUARDRAIL_VIOLATION"
    assert refused[-1]["violations"][0]["check"] == "guardrail/public"


async def test_a_changed_file_reloads_and_a_broken_one_keeps_the_previous_guardrails(
    service: RunningService, guardrails_file: Path, key: dict[str, Any]
) -> None:
    policy = with_statement(allow({"AWS": STRANGER}))

    async def codes() -> set[str]:
        reply = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy))
        return {f.code for f in reply.findings}

    assert "GUARDRAIL_PRINCIPAL_ACCOUNTS" in await codes()
    guardrails_file.write_text(f'principal_accounts: ["{ACCOUNT}", "{STRANGER}"]\n')

    async def reloaded() -> bool:
        return "GUARDRAIL_PRINCIPAL_ACCOUNTS" not in await codes()

    await until(reloaded, what="the widened guardrails reloaded", interval=0.05)
    from kms_policy_service import metrics

    errors_before = metrics.guardrails_reloads_total.labels("error")._value.get()
    guardrails_file.write_text("principal_accounts: [not, a, list")
    await until(
        lambda: metrics.guardrails_reloads_total.labels("error")._value.get() != errors_before,
        what="the broken file read",
    )
    assert "GUARDRAIL_PRINCIPAL_ACCOUNTS" not in await codes()  # the previous file holds


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "No such file"),
        ("principal_accounts: [123456789012]", "quote account IDs"),
        ("public: maybe", "public must be"),
        ("deny_everything: true", "unknown key 'deny_everything'"),
    ],
    ids=["missing", "unquoted-account", "bad-public", "unknown-key"],
)
def test_a_bad_guardrails_file_at_start_exits_2_saying_why(
    faults: KmsFaultInjector, tmp_path: Path, content: str | None, says: str
) -> None:
    from tests.support.process import ServiceProcess, loopback_service

    path = tmp_path / "guardrails.yaml"
    if content is not None:
        path.write_text(content)
    proc = ServiceProcess([*loopback_service(on=faults.url), "--guardrails", str(path)])
    with pytest.raises(RuntimeError):
        proc.start(timeout=30)
    assert proc.wait(10) == 2
    assert any(says in str(r.get("message", "")) for r in proc.drain_logs())


async def test_refusals_are_counted_by_check(service: RunningService, kms: Any) -> None:
    # A key whose policy holds no protected statement, so a lockout is the last check.
    unprotected = json.loads(policy_for())
    unprotected["Statement"][0]["Sid"] = "Root"
    key = kms.create_key(Policy=json.dumps(unprotected))["KeyMetadata"]
    from kms_policy_service import metrics

    def count(check: str) -> float:
        value: float = metrics.policy_refusals_total.labels(check)._value.get()
        return value

    before = {c: count(c) for c in ("guardrail/public", "lockout", "document")}
    lockout = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"})],
        }
    )
    for policy in (with_statement(allow("*")), lockout, "{not json"):
        with pytest.raises(grpc.aio.AioRpcError):
            await service.stub.PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy)
            )
    assert {c: count(c) - before[c] for c in before} == {
        "guardrail/public": 1,
        "lockout": 1,
        "document": 1,
    }
