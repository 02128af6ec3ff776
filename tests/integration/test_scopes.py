"""Caller scopes through the real server: a caller changes only the statements it owns."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms_policy_service.etag import canonical_json
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

PAYMENTS = "spiffe://cluster.local/ns/payments/sa/api"
PLATFORM = "spiffe://cluster.local/ns/platform/sa/admin"
TWO_HATS = "spiffe://cluster.local/ns/shared/sa/both"
APP_ROLE = f"arn:aws:iam::{ACCOUNT}:role/payments-app"


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "authz.yaml"
    path.write_text(
        f"""
rules:
  - callers: ["{PAYMENTS}"]
    actions: ["GetKeyPolicy", "PutKeyPolicy", "ValidateKeyPolicy"]
    keys: ["*"]
    scope:
      sids: ["payments-*"]
      principals: ["arn:aws:iam::{ACCOUNT}:role/payments-*"]
      actions: ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:DescribeKey"]
  - callers: ["{TWO_HATS}"]
    actions: ["PutKeyPolicy"]
    keys: ["*"]
    scope: {{sids: ["a-*"]}}
  - callers: ["{TWO_HATS}"]
    actions: ["PutKeyPolicy"]
    keys: ["*"]
    scope: {{sids: ["b-*"]}}
  - callers: ["{PLATFORM}"]
    actions: ["*"]
    keys: ["*"]
"""
    )
    return {
        "authz_policy": str(path),
        "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),),
        "key_write_rate_limit": None,
        "caller_refusal_rate_limit": None,
    }


def as_caller(identity: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-client-cert", f"Hash=0;URI={identity}"),)


def statement(sid: str | None, **fields: Any) -> dict[str, Any]:
    s = {
        "Effect": "Allow",
        "Principal": {"AWS": APP_ROLE},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
        **fields,
    }
    return s if sid is None else {"Sid": sid, **s}


async def put(
    service: RunningService, caller: str, key: dict[str, Any], policy: str, **flags: Any
) -> pb.PutKeyPolicyResponse:
    reply: pb.PutKeyPolicyResponse = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy, **flags),
        metadata=as_caller(caller),
    )
    return reply


async def refused(
    service: RunningService, caller: str, key: dict[str, Any], policy: str
) -> list[tuple[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(service, caller, key, policy)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "OUT_OF_SCOPE")
    assert details.error_info.metadata["caller"] == caller
    assert details.bad_request is not None
    return [
        (v.reason, p)
        for v, p in zip(details.bad_request.field_violations, details.paths, strict=True)
    ]


async def test_a_scoped_caller_adds_and_changes_its_own_statement(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await put(service, PAYMENTS, key, policy_for(extra=[statement("payments-app")]))
    changed = statement("payments-app", Action="kms:Encrypt")
    await put(service, PAYMENTS, key, policy_for(extra=[changed]))
    await put(service, PAYMENTS, key, policy_for())  # and removes it
    assert faults.kms_operations().count("PutKeyPolicy") == 3


OUT_OF_SCOPE_CASES = [
    ("unowned sid", [statement("other-app")], ("OUT_OF_SCOPE", "Statement[1].Sid")),
    (
        "principal outside",
        [statement("payments-x", Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/billing"})],
        ("OUT_OF_SCOPE", "Statement[1].Principal.AWS"),
    ),
    (
        "account root is not a scoped role",
        [statement("payments-x", Principal={"AWS": ACCOUNT})],
        ("OUT_OF_SCOPE", "Statement[1].Principal.AWS"),
    ),
    (
        "kms:* is not within the actions",
        [statement("payments-x", Action="kms:*")],
        ("OUT_OF_SCOPE", "Statement[1].Action"),
    ),
    (
        "a wildcard wider than the scope",
        [statement("payments-x", Action="kms:Gen*")],
        ("OUT_OF_SCOPE", "Statement[1].Action"),
    ),
    (
        "NotAction is never within",
        [statement("payments-x", Action=None)],
        ("OUT_OF_SCOPE", "Statement[1].NotAction"),
    ),
    ("a statement without a Sid", [statement(None)], ("OUT_OF_SCOPE", "Statement[1]")),
]


@pytest.mark.parametrize(
    ("name", "extra", "expected"), OUT_OF_SCOPE_CASES, ids=[c[0] for c in OUT_OF_SCOPE_CASES]
)
async def test_changes_outside_the_scope_are_refused_with_their_paths(
    service: RunningService,
    faults: KmsFaultInjector,
    key: dict[str, Any],
    name: str,
    extra: list[dict[str, Any]],
    expected: tuple[str, str],
) -> None:
    if name == "NotAction is never within":
        extra = [{k: v for k, v in extra[0].items() if k != "Action"} | {"NotAction": "kms:Sign"}]
    policy = policy_for(extra=extra)
    faults.clear()
    assert expected in await refused(service, PAYMENTS, key, policy)
    validated = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(key_id=key["Arn"], policy=policy), metadata=as_caller(PAYMENTS)
    )
    assert expected in {(f.code, f.path) for f in validated.findings}
    assert "PutKeyPolicy" not in faults.kms_operations()


async def test_the_administrators_statement_cannot_be_changed_or_removed_by_a_scoped_caller(
    service: RunningService, key: dict[str, Any]
) -> None:
    doc = json.loads(policy_for())
    doc["Statement"][0]["Action"] = "kms:Decrypt"
    assert ("OUT_OF_SCOPE", "Statement[0].Sid") in await refused(
        service, PAYMENTS, key, json.dumps(doc)
    )
    doc["Statement"] = [statement("payments-app")]
    assert ("OUT_OF_SCOPE", "Statement") in await refused(service, PAYMENTS, key, json.dumps(doc))


async def test_one_rule_must_allow_the_whole_change(
    service: RunningService, key: dict[str, Any]
) -> None:
    unscoped = {"Principal": {"AWS": ACCOUNT}, "Action": "kms:Decrypt"}
    await put(service, TWO_HATS, key, policy_for(extra=[statement("a-1", **unscoped)]))
    # Adding b-1 alone is the b-* rule's; changing a-1 and adding b-1 is no one rule's.
    await put(
        service,
        TWO_HATS,
        key,
        policy_for(extra=[statement("a-1", **unscoped), statement("b-1", **unscoped)]),
    )
    both = [statement("a-1", **unscoped | {"Action": "kms:Encrypt"}), statement("b-2", **unscoped)]
    reasons = await refused(service, TWO_HATS, key, policy_for(extra=both))
    assert ("OUT_OF_SCOPE", "Statement[1].Sid") in reasons or (
        "OUT_OF_SCOPE",
        "Statement[2].Sid",
    ) in reasons


async def test_a_rule_without_scope_allows_any_change(
    service: RunningService, key: dict[str, Any]
) -> None:
    doc = json.loads(policy_for(extra=[statement(None, Principal={"AWS": ACCOUNT})]))
    await put(service, PLATFORM, key, json.dumps(doc))


async def test_validate_only_is_judged_like_a_put(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await put(service, PAYMENTS, key, policy_for(extra=[statement("x")]), validate_only=True)
    assert details_of(caught.value).reason == "OUT_OF_SCOPE"
    assert "PutKeyPolicy" not in faults.kms_operations()


# -- property: what a scoped caller cannot touch stays byte for byte ---------------------

OTHERS = [
    {
        "Sid": "Ops",
        "Effect": "Allow",
        "Principal": {"AWS": ACCOUNT},
        "Action": "kms:Decrypt",
        "Resource": "*",
    },
    {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "kms:Encrypt", "Resource": "*"},
]
SIDS = st.sampled_from(["payments-a", "payments-b", "Ops", "Enable IAM User Permissions", None])
ACTIONS = st.sampled_from(
    ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:*", "kms:Sign"]
)
PRINCIPALS = st.sampled_from([APP_ROLE, ACCOUNT, f"arn:aws:iam::{ACCOUNT}:role/payments-b"])


@st.composite
def edits(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A new statement list: some of today's kept, dropped or changed, some added."""
    out = []
    for s in json.loads(policy_for(extra=OTHERS))["Statement"]:
        choice = draw(st.sampled_from(["keep", "drop", "change"]))
        if choice == "keep":
            out.append(s)
        elif choice == "change":
            out.append({**s, "Action": draw(ACTIONS)})
    for _ in range(draw(st.integers(0, 2))):
        out.append(statement(draw(SIDS), Action=draw(ACTIONS), Principal={"AWS": draw(PRINCIPALS)}))
    return out


def outside_scope(doc: dict[str, Any]) -> list[str]:
    statements = doc["Statement"]
    return sorted(
        canonical_json(s) for s in statements if not str(s.get("Sid", "")).startswith("payments-")
    )


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(new=edits())
async def test_property_a_scoped_put_never_touches_statements_it_does_not_own(
    service: RunningService, kms: Any, new: list[dict[str, Any]]
) -> None:
    key = kms.create_key(Policy=policy_for(extra=OTHERS))["KeyMetadata"]
    before = json.loads(kms.get_key_policy(KeyId=key["Arn"], PolicyName="default")["Policy"])
    doc = {"Version": "2012-10-17", "Statement": new}
    try:
        await put(service, PAYMENTS, key, json.dumps(doc))
        accepted = True
    except grpc.aio.AioRpcError:
        accepted = False
    after = json.loads(kms.get_key_policy(KeyId=key["Arn"], PolicyName="default")["Policy"])
    if accepted:
        assert outside_scope(after) == outside_scope(before)
    else:
        assert canonical_json(after) == canonical_json(before)


async def test_a_scoped_caller_cannot_change_version_or_id(
    service: RunningService, key: dict[str, Any]
) -> None:
    doc = json.loads(policy_for(extra=[statement("payments-app")]))
    doc["Version"] = "2008-10-17"  # would change what every statement's variables mean
    assert ("OUT_OF_SCOPE", "Version") in await refused(service, PAYMENTS, key, json.dumps(doc))


async def test_validate_alone_never_shows_what_the_current_policy_holds(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    from kms_policy_service import Server
    from tests.conftest import service_settings

    authz = tmp_path / "validate-only.yaml"
    authz.write_text(
        f"rules:\n  - callers: ['{PAYMENTS}']\n    actions: ['ValidateKeyPolicy']\n    keys: ['*']\n"
    )
    guardrails = tmp_path / "guardrails.yaml"
    guardrails.write_text("protected_sids: ['Enable IAM User Permissions']\n")
    server = Server(
        service_settings(
            service.server.settings.kms_endpoint_url or "",
            authz_policy=str(authz),
            guardrails=str(guardrails),
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        )
    )
    await server.startup()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

            guess = json.loads(policy_for())
            guess["Statement"][0]["Action"] = "kms:Decrypt"  # a wrong guess of its content
            reply = await pb_grpc.PolicyServiceStub(channel).ValidateKeyPolicy(
                pb.ValidateKeyPolicyRequest(key_id=key["Arn"], policy=json.dumps(guess)),
                metadata=as_caller(PAYMENTS),
            )
        assert not [f for f in reply.findings if f.code == "GUARDRAIL_PROTECTED_SIDS"]
    finally:
        await server.shutdown()
