"""Bad requests are refused with the right code, reason and field path, and never reach KMS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service.etag import policy_etag
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

SEED = (Path(__file__).parents[1] / "fixtures" / "seed_policy.json").read_text()
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OK_POLICY = policy_for()


def put(key_id: str = KEY_ARN, policy: str = OK_POLICY, **kw: Any) -> pb.PutKeyPolicyRequest:
    return pb.PutKeyPolicyRequest(key_id=key_id, policy=policy, **kw)


BAD_REQUESTS: list[tuple[str, Any, str, str, str | None]] = [
    # (rpc, request, reason, field, JSON path of the first violation)
    ("Put", put(key_id=""), "INVALID_KEY_ID", "key_id", None),
    ("Put", put(key_id="fake-key-id"), "INVALID_KEY_ID", "key_id", None),
    ("Put", put(key_id="k" * 2049), "INVALID_KEY_ID", "key_id", None),
    # an account ID in another script's digits is no account ID (not a "cross-account" key)
    ("Put", put(key_id=KEY_ARN.replace(ACCOUNT, "\u0661" * 12)), "INVALID_KEY_ID", "key_id", None),
    (
        "Put",
        put(key_id=KEY_ARN.replace(ACCOUNT, "999999999999")),
        "CROSS_ACCOUNT_KEY",
        "key_id",
        None,
    ),
    (
        "Put",
        put(key_id=KEY_ARN.replace("us-east-1", "eu-west-1")),
        "REGION_NOT_ALLOWED",
        "key_id",
        None,
    ),
    ("Put", put(policy_name="AWS_RAM"), "INVALID_POLICY_NAME", "policy_name", None),
    ("Put", put(policy_name="custom"), "INVALID_POLICY_NAME", "policy_name", None),
    ("Put", put(etag="abc"), "INVALID_ETAG", "etag", None),
    ("Put", put(policy=""), "INVALID_POLICY", "policy", ""),
    ("Put", put(policy="{"), "INVALID_POLICY", "policy", ""),
    ("Put", put(policy=OK_POLICY + " " * 32_768), "INVALID_POLICY", "policy", ""),
    (
        "Put",
        put(policy=OK_POLICY.replace("Enable", "Ënable\u0100")),
        "INVALID_POLICY",
        "policy",
        "",
    ),
    (
        "Put",
        put(
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"AWS": "nobody"},
                            "Action": "kms:*",
                            "Resource": "*",
                        }
                    ],
                }
            )
        ),
        "INVALID_POLICY",
        "policy",
        "Statement[0].Principal.AWS",
    ),
    ("Put", put(policy=SEED), "POLICY_LOCKOUT", "policy", "Statement"),
    ("Get", pb.GetKeyPolicyRequest(key_id="alias/has space"), "INVALID_KEY_ID", "key_id", None),
    (
        "Get",
        pb.GetKeyPolicyRequest(key_id=KEY_ARN, policy_name="bad-name"),
        "INVALID_POLICY_NAME",
        "policy_name",
        None,
    ),
    (
        "List",
        pb.ListKeyPoliciesRequest(key_id=KEY_ARN, page_size=1001),
        "INVALID_PAGE_SIZE",
        "page_size",
        None,
    ),
    (
        "List",
        pb.ListKeyPoliciesRequest(key_id=KEY_ARN, page_size=-1),
        "INVALID_PAGE_SIZE",
        "page_size",
        None,
    ),
    (
        "Validate",
        pb.ValidateKeyPolicyRequest(key_id="nope", policy=OK_POLICY),
        "INVALID_KEY_ID",
        "key_id",
        None,
    ),
]


@pytest.mark.parametrize(("rpc", "request_", "reason", "field", "path"), BAD_REQUESTS)
async def test_bad_input_is_refused_before_kms(
    service: RunningService,
    faults: KmsFaultInjector,
    rpc: str,
    request_: Any,
    reason: str,
    field: str,
    path: str | None,
) -> None:
    method = {
        "Put": service.stub.PutKeyPolicy,
        "Get": service.stub.GetKeyPolicy,
        "List": service.stub.ListKeyPolicies,
        "Validate": service.stub.ValidateKeyPolicy,
    }[rpc]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == reason
    assert details.bad_request is not None
    assert details.bad_request.field_violations[0].field == field
    if path is not None:
        assert details.paths[0] == path
    assert faults.kms_operations() == []


async def test_a_message_far_over_any_valid_request_is_refused_by_grpc_itself(
    service: RunningService, faults: KmsFaultInjector
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(put(policy=OK_POLICY + " " * 140_000))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert faults.kms_operations() == []


async def test_policy_errors_are_all_reported_with_their_paths(
    service: RunningService, faults: KmsFaultInjector
) -> None:
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Maybe", "Principal": "*", "Action": "kms:*", "Resource": "*"},
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT},
                    "Action": "s3:*",
                    "Resource": "*",
                },
            ],
        }
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(put(policy=policy))
    details = details_of(caught.value)
    # Every error at once: the document's two, and the lockout they cause.
    assert details.paths == ["Statement[0].Effect", "Statement[1].Action", "Statement"]
    assert details.bad_request is not None
    assert [v.reason for v in details.bad_request.field_violations][-1] == "POLICY_LOCKOUT"
    assert details.reason == "INVALID_POLICY"
    assert faults.kms_operations() == []


@pytest.mark.parametrize("validate_only", [False, True])
async def test_a_put_by_key_arn_reports_document_resource_and_lockout_errors_in_one_answer(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], validate_only: bool
) -> None:
    other_key = key["Arn"].rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000"
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "kms:Nope"},
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT},
                    "Action": "kms:*",
                    "Resource": other_key,
                },
            ],
        }
    )
    faults.clear()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy, validate_only=validate_only)
        )
    details = details_of(caught.value)
    assert details.bad_request is not None
    violations = details.bad_request.field_violations
    reasons = {(v.reason, p) for v, p in zip(violations, details.paths, strict=True)}
    assert ("UNKNOWN_ACTION", "Statement[0].Action") in reasons
    assert ("MISSING_RESOURCE", "Statement[0].Resource") in reasons
    assert ("NEVER_MATCHES", "Statement[1].Resource") in reasons
    assert ("POLICY_LOCKOUT", "Statement") in reasons
    # ...and they are exactly the errors ValidateKeyPolicy reports for that key.
    validated = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(key_id=key["Arn"], policy=policy)
    )
    errors = {
        (f.code, f.path) for f in validated.findings if f.severity == pb.Finding.SEVERITY_ERROR
    }
    assert errors == reasons
    assert "PutKeyPolicy" not in faults.kms_operations()


async def test_the_seed_policy_needs_the_bypass_flag_and_then_reaches_kms_with_it(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(put(key_id=key["Arn"], policy=SEED))
    details = details_of(caught.value)
    assert details.reason == "POLICY_LOCKOUT"
    assert "arn:aws:iam::123456789012:user/moto" in details.message
    assert "PutKeyPolicy" not in faults.operations()
    await service.stub.PutKeyPolicy(
        put(key_id=key["Arn"], policy=SEED, bypass_policy_lockout_safety_check=True)
    )
    sent = [s.body for s in faults.seen if s.operation == "PutKeyPolicy"]
    assert sent[-1]["BypassPolicyLockoutSafetyCheck"] is True


async def test_validate_reports_findings_without_writing(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    clean = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=SEED))
    assert list(clean.findings) == []
    locked = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(policy=SEED, key_id=key["Arn"])
    )
    assert [(f.severity, f.code) for f in locked.findings] == [
        (pb.Finding.SEVERITY_ERROR, "POLICY_LOCKOUT")
    ]
    public = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}
            ],
        }
    )
    risky = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(policy=public, key_id=key["Arn"])
    )
    assert [(f.severity, f.code, f.path) for f in risky.findings] == [
        (pb.Finding.SEVERITY_WARNING, "PUBLIC_KMS_ALL", "Statement[0].Principal")
    ]
    assert "PutKeyPolicy" not in faults.operations()


async def test_validate_only_runs_every_check_and_writes_nothing(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    policy = policy_for(
        extra=[
            {
                "Sid": "X",
                "Effect": "Allow",
                "Principal": {"AWS": ACCOUNT},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    reply = await service.stub.PutKeyPolicy(
        put(key_id=key["Arn"], policy=policy, validate_only=True)
    )
    assert reply.etag == policy_etag(policy) and reply.key_arn == key["Arn"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(put(key_id=key["Arn"], policy=SEED, validate_only=True))
    assert details_of(caught.value).reason == "POLICY_LOCKOUT"
    assert "PutKeyPolicy" not in faults.operations()


async def test_a_resource_naming_another_key_is_refused(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    other = policy_for(
        extra=[
            {
                "Sid": "X",
                "Effect": "Allow",
                "Principal": {"AWS": ACCOUNT},
                "Action": "kms:Decrypt",
                "Resource": KEY_ARN,
            }
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(put(key_id=key["Arn"], policy=other))
    details = details_of(caught.value)
    assert (details.reason, details.paths) == ("INVALID_POLICY", ["Statement[1].Resource"])
    assert "PutKeyPolicy" not in faults.operations()


async def test_page_tokens_are_opaque_and_bound_to_their_key(
    service: RunningService, key: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListKeyPolicies(
            pb.ListKeyPoliciesRequest(key_id=key["Arn"], page_token="garbage!")
        )
    assert details_of(caught.value).reason == "INVALID_PAGE_TOKEN"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"allowed_regions": frozenset({"us-west-2"})}


async def test_an_allowed_region_is_served_through_its_own_client(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    import boto3

    west = boto3.client("kms", endpoint_url=moto_url, region_name="us-west-2")
    arn = west.create_key(Policy=policy_for())["KeyMetadata"]["Arn"]
    assert ":us-west-2:" in arn
    reply = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn))
    assert reply.key_arn == arn


async def test_hostile_nesting_is_refused_not_a_crash(
    service: RunningService, faults: KmsFaultInjector
) -> None:
    for policy in (
        "[" * 16_000 + "]" * 16_000,
        '{"Statement": ' + "[" * 16_000 + "]" * 16_000 + "}",
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.PutKeyPolicy(put(policy=policy))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    token = __import__("base64").urlsafe_b64encode(b"[" * 30_000).decode()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListKeyPolicies(
            pb.ListKeyPoliciesRequest(key_id=KEY_ARN, page_token=token)
        )
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert faults.kms_operations() in ([], ["DescribeKey"])


async def test_validate_only_compares_the_etag_as_a_write_would(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(
                key_id=key["Arn"], policy=policy_for(), etag="0" * 64, validate_only=True
            )
        )
    assert details_of(caught.value).reason == "ETAG_MISMATCH"
    current = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(
            key_id=key["Arn"], policy=policy_for(), etag=current.etag, validate_only=True
        )
    )
    assert "PutKeyPolicy" not in faults.kms_operations()
