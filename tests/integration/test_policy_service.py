"""PolicyService end to end: the real server, aiobotocore over HTTP, a real moto KMS."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from kms_policy_service.etag import policy_etag
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of


async def test_put_then_get_round_trips_the_policy_and_the_etags_agree(
    service: RunningService, key: dict[str, Any]
) -> None:
    policy = policy_for(
        extra=[
            {
                "Sid": "Read",
                "Effect": "Allow",
                "Principal": {"AWS": ACCOUNT},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    put = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["KeyId"], policy=policy)
    )
    got = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["KeyId"]))
    assert got.policy == policy  # moto stores it byte for byte
    assert got.etag == put.etag == policy_etag(policy)
    assert put.key_arn == got.key_arn == key["Arn"]
    assert put.policy_name == got.policy_name == "default"


async def test_etag_ignores_reindentation(service: RunningService, key: dict[str, Any]) -> None:
    compact = policy_for()
    indented = json.dumps(json.loads(compact), indent=4)
    first = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=compact)
    )
    second = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=indented)
    )
    assert first.etag == second.etag


@pytest.mark.parametrize("form", ["KeyId", "Arn"])
async def test_get_accepts_a_key_id_and_a_key_arn(
    service: RunningService, key: dict[str, Any], form: str
) -> None:
    got = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key[form]))
    assert got.key_arn == key["Arn"]
    assert json.loads(got.policy) == json.loads(policy_for())


async def test_get_accepts_an_alias_and_answers_with_the_key_arn(
    service: RunningService, key: dict[str, Any], kms: Any
) -> None:
    kms.create_alias(AliasName=f"alias/t-{key['KeyId'][:8]}", TargetKeyId=key["KeyId"])
    got = await service.stub.GetKeyPolicy(
        pb.GetKeyPolicyRequest(key_id=f"alias/t-{key['KeyId'][:8]}")
    )
    assert got.key_arn == key["Arn"]


async def test_empty_policy_name_means_default_and_is_sent_explicitly(
    service: RunningService, key: dict[str, Any], faults: KmsFaultInjector
) -> None:
    got = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"], policy_name=""))
    assert got.policy_name == "default"
    sent = [s.body for s in faults.seen if s.operation == "GetKeyPolicy"]
    assert sent and sent[-1]["PolicyName"] == "default"


async def test_list_key_policies_returns_default(
    service: RunningService, key: dict[str, Any]
) -> None:
    listed = await service.stub.ListKeyPolicies(pb.ListKeyPoliciesRequest(key_id=key["KeyId"]))
    assert list(listed.policy_names) == ["default"]
    assert listed.next_page_token == ""


async def test_unknown_key_is_not_found(service: RunningService) -> None:
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=missing))
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "KEY_NOT_FOUND"
    assert details.error_info.metadata["kmsErrorCode"] == "NotFoundException"


async def test_responses_carry_a_request_id_and_honour_a_given_one(
    service: RunningService, key: dict[str, Any]
) -> None:
    call = service.stub.GetKeyPolicy(
        pb.GetKeyPolicyRequest(key_id=key["Arn"]), metadata=(("x-request-id", "req-123"),)
    )
    await call
    assert ("x-request-id", "req-123") in list(await call.initial_metadata())
