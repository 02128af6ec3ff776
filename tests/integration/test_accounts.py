"""Keys in member accounts, through the real server on moto over HTTP: a role per account
(--account-role), assumed with botocore's refreshable credentials, the lockout check by
the member role, STS failures per account, and caller session tags."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from kms_policy_service.settings import Rate
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until

MEMBER = "222222222222"
OTHER_MEMBER = "333333333333"
UNLISTED = "444444444444"
ROLE = f"arn:aws:iam::{MEMBER}:role/kms-policy-service"
OTHER_ROLE = f"arn:aws:iam::{OTHER_MEMBER}:role/kms-policy-service"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
TEAM = "spiffe://cluster.local/ns/team/sa/app"
STRANGER = "spiffe://cluster.local/ns/other/sa/app"


def member_kms(moto_url: str, account: str) -> Any:
    """A boto3 KMS client acting in `account` (moto: credentials from AssumeRole into it)."""
    sts = boto3.client("sts", endpoint_url=moto_url, region_name="us-east-1")
    creds = sts.assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/test-setup", RoleSessionName="setup"
    )["Credentials"]
    return boto3.client(
        "kms",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def member_key(moto_url: str, account: str = MEMBER, alias: str | None = None) -> dict[str, Any]:
    client = member_kms(moto_url, account)
    meta: dict[str, Any] = client.create_key(Policy=policy_for(account))["KeyMetadata"]
    if alias:
        client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return meta


def member_role_only(role: str = ROLE) -> str:
    """A policy in which only the member role (no account root) may manage the key."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ServiceManages",
                    "Effect": "Allow",
                    "Principal": {"AWS": role},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
    )


def as_caller(identity: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-client-cert", f"Hash=0;URI={identity}"),)


def roles(**extra: Any) -> dict[str, Any]:
    return {"account_roles": {MEMBER: ROLE, OTHER_MEMBER: OTHER_ROLE}, **extra}


async def get(service: RunningService, key_id: str, *, caller: str = "") -> pb.GetKeyPolicyResponse:
    md = as_caller(caller) if caller else None
    response: pb.GetKeyPolicyResponse = await service.stub.GetKeyPolicy(
        pb.GetKeyPolicyRequest(key_id=key_id), metadata=md, timeout=10
    )
    return response


async def failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details_of(caught.value)


def assume_roles(faults: KmsFaultInjector, role: str = ROLE) -> list[dict[str, Any]]:
    return [s.body for s in faults.requests("AssumeRole") if s.body.get("RoleArn") == role]


# -- keys of a member account ------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_a_member_accounts_key_is_read_and_written_by_key_arn_and_by_alias_arn(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url, alias="alias/member-app")
    alias_arn = f"arn:aws:kms:us-east-1:{MEMBER}:alias/member-app"

    by_arn = await get(service, meta["Arn"])
    by_alias = await get(service, alias_arn)
    assert by_arn.key_arn == by_alias.key_arn == meta["Arn"]
    assert json.loads(by_arn.policy) == json.loads(policy_for(MEMBER))

    new = policy_for(
        MEMBER, extra=[{"Sid": "Added", **json.loads(member_role_only())["Statement"][0]}]
    )
    for key_id in (meta["Arn"], alias_arn):
        put = await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(
                key_id=key_id, policy=new, etag=(await get(service, key_id)).etag
            ),
            timeout=10,
        )
        assert put.key_arn == meta["Arn"]
    stored = member_kms(moto_url, MEMBER).get_key_policy(KeyId=meta["KeyId"], PolicyName="default")
    assert json.loads(stored["Policy"]) == json.loads(new)
    # Signed with the member role's session: the AssumeRole named it, with the session name.
    (assumed,) = assume_roles(faults)
    assert assumed["RoleSessionName"] == "kms-policy-service"


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_a_member_key_named_by_alias_name_or_bare_id_is_looked_up_in_the_home_account(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url, alias="alias/member-only")
    for key_id in (meta["KeyId"], "alias/member-only"):
        details = await failure(get(service, key_id))
        assert details.code == grpc.StatusCode.NOT_FOUND, key_id
    assert assume_roles(faults) == []  # the home account's credentials were used


@pytest.fixture
def authz_file(tmp_path: Path) -> Path:
    path = tmp_path / "authz.yaml"
    path.write_text(
        f"""
rules:
  - callers: ["{ADMIN}"]
    actions: ["*"]
    keys: ["*"]
  - callers: ["{TEAM}"]
    actions: ["*"]
    keys: ["arn:aws:kms:*:{MEMBER}:key/*"]
  - callers: ["{STRANGER}"]
    actions: ["*"]
    keys: ["alias/payments-home"]
"""
    )
    return path


@pytest.fixture
def authz_overrides(authz_file: Path) -> dict[str, Any]:
    return roles(
        authz_policy=str(authz_file),
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    """roles() by default; parametrized tests pass their own; authz tests ask for it."""
    param = getattr(request, "param", None)
    if param == "authz":
        overrides: dict[str, Any] = request.getfixturevalue("authz_overrides")
        return overrides
    if param == "audit":
        tmp_path: Path = request.getfixturevalue("tmp_path")
        return roles(
            audit_log=str(tmp_path / "audit.jsonl"),
            caller_session_tags=True,
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
            key_write_rate_limit=None,
        )
    if param == "canary":
        moto_url: str = request.getfixturevalue("moto_url")
        return roles(kms_canary_key=member_key(moto_url)["Arn"], kms_canary_interval=0.1)
    return param if param is not None else roles()


@pytest.mark.parametrize("settings_overrides", ["authz"], indirect=True)
async def test_an_unlisted_accounts_key_is_cross_account_only_to_an_authorized_caller(
    service: RunningService, moto_url: str
) -> None:
    meta = member_key(moto_url, UNLISTED)
    admin = await failure(get(service, meta["Arn"], caller=ADMIN))
    assert (admin.code, admin.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CROSS_ACCOUNT_KEY")
    stranger = await failure(get(service, meta["Arn"], caller=STRANGER))
    assert (stranger.code, stranger.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_NOT_AUTHORIZED",
    )
    assert ACCOUNT not in stranger.message  # nothing of the service's own account


@pytest.mark.parametrize("settings_overrides", ["authz"], indirect=True)
async def test_a_rule_naming_an_accounts_key_arns_scopes_a_caller_to_that_account(
    service: RunningService, moto_url: str, kms: Any
) -> None:
    meta = member_key(moto_url)
    home = kms.create_key(Policy=policy_for())["KeyMetadata"]
    assert (await get(service, meta["Arn"], caller=TEAM)).key_arn == meta["Arn"]
    denied = await failure(get(service, home["Arn"], caller=TEAM))
    assert denied.reason == "CALLER_NOT_AUTHORIZED"


@pytest.mark.parametrize("settings_overrides", ["authz"], indirect=True)
async def test_a_rule_on_an_alias_name_never_reaches_a_member_accounts_alias_of_that_name(
    service: RunningService, moto_url: str, kms: Any, faults: KmsFaultInjector
) -> None:
    home = kms.create_key(Policy=policy_for())["KeyMetadata"]
    kms.create_alias(AliasName="alias/payments-home", TargetKeyId=home["KeyId"])
    member_key(moto_url, alias="alias/payments-home")  # someone in the member account
    home_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/payments-home"
    assert (await get(service, home_arn, caller=STRANGER)).key_arn == home["Arn"]
    faults.clear()
    member_alias = f"arn:aws:kms:us-east-1:{MEMBER}:alias/payments-home"
    for call in (
        get(service, member_alias, caller=STRANGER),
        service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=member_alias, policy=policy_for(MEMBER)),
            metadata=as_caller(STRANGER),
        ),
    ):
        denied = await failure(call)
        assert (denied.code, denied.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CALLER_NOT_AUTHORIZED",
        )
    assert "PutKeyPolicy" not in faults.kms_operations()


# -- the lockout check -----------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_the_lockout_check_for_a_member_key_is_the_member_roles(
    service: RunningService, moto_url: str
) -> None:
    meta = member_key(moto_url)
    someone_else = member_role_only(f"arn:aws:iam::{MEMBER}:role/someone-else")
    refused = await failure(
        service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=meta["Arn"], policy=someone_else), timeout=10
        )
    )
    assert refused.reason == "POLICY_LOCKOUT"
    assert ROLE in refused.message
    validated = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(key_id=meta["Arn"], policy=someone_else), timeout=10
    )
    lockouts = [f for f in validated.findings if f.code == "POLICY_LOCKOUT"]
    assert lockouts and ROLE in lockouts[0].message
    # Keeping only the member role's access passes (the home principal is not needed).
    kept = member_role_only(ROLE)
    for key_id in (meta["Arn"], f"arn:aws:kms:us-east-1:{MEMBER}:key/{meta['KeyId']}"):
        validated = await service.stub.ValidateKeyPolicy(
            pb.ValidateKeyPolicyRequest(key_id=key_id, policy=kept), timeout=10
        )
        assert not [f for f in validated.findings if f.severity == pb.Finding.SEVERITY_ERROR]
    put = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=meta["Arn"], policy=kept), timeout=10
    )
    assert put.key_arn == meta["Arn"]


# -- sessions: one AssumeRole, renewed near expiry -----------------------------------


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_concurrent_first_calls_share_one_assume_role_renewed_only_near_expiry(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    # The first session lasts 15 minutes and 3 seconds: botocore renews it once fewer
    # than 15 minutes are left (its advisory window), i.e. after about 3 seconds.
    faults.add(Rule("AssumeRole", "expiring", expires_in=15 * 60 + 3, times=1))
    started = time.monotonic()
    answers = await asyncio.gather(*(get(service, meta["Arn"]) for _ in range(40)))
    assert {a.key_arn for a in answers} == {meta["Arn"]}
    assert len(assume_roles(faults)) == 1
    while time.monotonic() - started < 2.0:  # inside the session: no AssumeRole
        await get(service, meta["Arn"])
        assert len(assume_roles(faults)) == 1

    async def renewed() -> bool:
        await get(service, meta["Arn"])  # a call is what notices the session is due
        return len(assume_roles(faults)) >= 2

    await until(renewed, timeout=20, what="the session renewed", interval=0.1)
    # The renewed session (an hour) serves every later call.
    await asyncio.gather(*(get(service, meta["Arn"]) for _ in range(20)))
    assert len(assume_roles(faults)) == 2


# -- STS failures, per account ---------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_a_role_that_cannot_be_assumed_fails_only_its_account_until_it_can(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    good, bad = member_key(moto_url), member_key(moto_url, OTHER_MEMBER)
    rule = faults.add(
        Rule(
            "AssumeRole",
            "error",
            error_code="AccessDenied",
            status=403,
            message=f"User: arn:aws:iam::{ACCOUNT}:user/moto is not authorized",
            match={"RoleArn": OTHER_ROLE},
        )
    )
    denied = await failure(get(service, bad["Arn"]))
    assert (denied.code, denied.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ASSUME_ROLE_DENIED")
    assert denied.error_info.metadata["kmsOperation"] == "AssumeRole"
    assert "user/moto" not in denied.message  # STS's text names the service's own principal
    assert (await get(service, good["Arn"])).key_arn == good["Arn"]
    assert [s.operation for s in faults.seen if s.body.get("KeyId") == bad["Arn"]] == []
    assert credentials_state(OTHER_MEMBER) == 0 and credentials_state(MEMBER) == 1
    faults.rules.remove(rule)  # the role's trust policy is fixed: no restart needed
    assert (await get(service, bad["Arn"])).key_arn == bad["Arn"]
    assert credentials_state(OTHER_MEMBER) == 1


def credentials_state(account: str) -> float | None:
    return REGISTRY.get_sample_value("kms_policy_account_credentials", {"account": account})


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_sts_down_is_unavailable_with_retry_info_and_recovers_by_itself(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    rule = faults.add(Rule("AssumeRole", "drop"))
    down = await failure(get(service, meta["Arn"]))
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "STS_UNAVAILABLE")
    assert down.retry_info is not None and down.retry_info.retry_delay.ToNanoseconds() > 0
    assert len(faults.requests("AssumeRole")) == 3  # retried, like any unavailable KMS call
    faults.rules.remove(rule)
    assert (await get(service, meta["Arn"])).key_arn == meta["Arn"]


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_a_put_whose_credentials_fail_is_refused_not_unknown(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    faults.add(Rule("AssumeRole", "drop"))
    refused = await failure(
        service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=meta["Arn"], policy=policy_for(MEMBER)), timeout=10
        )
    )
    assert refused.reason == "STS_UNAVAILABLE"
    assert "policyChange" not in refused.error_info.metadata  # no KMS request was sent
    assert not [s for s in faults.seen if s.operation == "PutKeyPolicy"]


# -- callers named in CloudTrail ---------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides",
    [roles(caller_session_tags=True, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))],
    indirect=True,
)
async def test_with_caller_session_tags_each_caller_has_its_own_tagged_session(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    for caller in (ADMIN, TEAM, ADMIN, TEAM):
        await asyncio.gather(*(get(service, meta["Arn"], caller=caller) for _ in range(5)))
    tags = sorted(
        (body["Tags.member.1.Key"], body["Tags.member.1.Value"]) for body in assume_roles(faults)
    )
    assert tags == [("kms-policy-service:caller", ADMIN), ("kms-policy-service:caller", TEAM)]
    # Each caller's KMS calls are signed with its own session's credentials.
    signers = {s.access_key for s in faults.seen if s.operation == "GetKeyPolicy"}
    assert len(signers) == 2

    too_long = "spiffe://cluster.local/ns/team/sa/" + "a" * 240
    refused = await failure(get(service, meta["Arn"], caller=too_long))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "CALLER_IDENTITY_TOO_LONG",
    )
    assert len(assume_roles(faults)) == 2


@pytest.mark.parametrize("settings_overrides", [roles()], indirect=True)
async def test_without_caller_session_tags_one_untagged_session_serves_every_caller(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    for caller in ("", TEAM):
        await get(service, meta["Arn"], caller=caller)
    (assumed,) = assume_roles(faults)
    assert not any(k.startswith("Tags.") for k in assumed)


@pytest.mark.parametrize(
    "settings_overrides", [roles(assume_role_external_id="shared-secret-1")], indirect=True
)
async def test_the_external_id_is_sent_with_every_assume_role(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    await get(service, member_key(moto_url)["Arn"])
    (assumed,) = assume_roles(faults)
    assert assumed["ExternalId"] == "shared-secret-1"


# -- audit, rate limits, canary -------------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides",
    ["audit"],
    indirect=True,
)
async def test_audit_records_carry_the_account_the_role_and_the_session_identity(
    service: RunningService, moto_url: str, kms: Any
) -> None:
    audit_path = Path(service.server.settings.audit_log or "")
    member, home = member_key(moto_url), kms.create_key(Policy=policy_for())["KeyMetadata"]
    for meta, account in ((member, MEMBER), (home, ACCOUNT)):
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=meta["Arn"], policy=policy_for(account)),
            metadata=as_caller(TEAM),
            timeout=10,
        )
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    outcomes = {r["key_arn"]: r for r in records if r.get("phase") == "outcome"}
    assert {
        k: outcomes[member["Arn"]].get(k) for k in ("account", "role_arn", "session_identity")
    } == {
        "account": MEMBER,
        "role_arn": ROLE,
        "session_identity": TEAM,
    }
    assert outcomes[home["Arn"]]["account"] == ACCOUNT
    assert "role_arn" not in outcomes[home["Arn"]]


@pytest.mark.parametrize(
    "settings_overrides",
    [roles(account_rate_limit=Rate(0.1, 3), max_queue_wait=0.0)],
    indirect=True,
)
async def test_one_accounts_callers_cannot_spend_another_accounts_kms_quota(
    service: RunningService, moto_url: str, kms: Any
) -> None:
    member, home = member_key(moto_url), kms.create_key(Policy=policy_for())["KeyMetadata"]
    await get(service, member["Arn"])  # DescribeKey and GetKeyPolicy: 2 tokens
    await get(service, member["Arn"])  # the key cached: 1 token
    limited = await failure(get(service, member["Arn"]))
    assert limited.reason == "RATE_LIMITED"
    assert limited.quota_failure is not None
    assert limited.quota_failure.violations[0].subject == f"account:{MEMBER}:us-east-1"
    for _ in range(2):  # the home account has its own bucket
        assert (await get(service, home["Arn"])).key_arn == home["Arn"]


@pytest.mark.parametrize("settings_overrides", ["canary"], indirect=True)
async def test_the_kms_canary_may_name_a_member_accounts_key(
    service: RunningService, faults: KmsFaultInjector
) -> None:
    stub = health_pb2_grpc.HealthStub(service.channel)

    async def canary_serving() -> bool:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service="kmspolicy.v1.PolicyService/kms"), timeout=5
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    await until(canary_serving, what="the canary to succeed")
    assert credentials_state(MEMBER) == 1  # set to -1 at start, 1 by the canary's AssumeRole


@pytest.mark.parametrize(
    "settings_overrides",
    [
        roles(
            caller_session_tags=True,
            max_caller_sessions=1,
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
        )
    ],
    indirect=True,
)
async def test_caller_sessions_are_bounded_the_least_recent_closed_and_assumed_again(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    meta = member_key(moto_url)
    evicted = REGISTRY.get_sample_value("kms_policy_caller_sessions_evicted_total") or 0.0
    for caller in (ADMIN, ADMIN, TEAM, ADMIN):
        assert (await get(service, meta["Arn"], caller=caller)).key_arn == meta["Arn"]
    tagged = [b["Tags.member.1.Value"] for b in assume_roles(faults)]
    assert tagged == [ADMIN, TEAM, ADMIN]  # ADMIN's session was closed for TEAM's
    after = REGISTRY.get_sample_value("kms_policy_caller_sessions_evicted_total") or 0.0
    assert after - evicted == 2
