"""Answers stay within what gRPC may carry: findings are capped with TOO_MANY_FINDINGS, and
error trailers stay under the 8 KiB metadata limit whatever the request held."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from kms_policy_service.validation import parse_policy
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

TRAILER_LIMIT = 8 * 1024  # grpc.max_metadata_size's default, what clients accept


def many_findings_policy(n: int) -> str:
    """A small policy with four findings per statement."""
    statements = [{"Effect": 1, "Principal": 1, "Action": 1} for _ in range(n)]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))


def trailer_bytes(err: grpc.aio.AioRpcError) -> int:
    return sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())


async def test_validate_caps_2800_findings_and_says_how_many_were_left_out(
    service: RunningService,
) -> None:
    policy = many_findings_policy(700)
    assert len(policy) < 32_768
    total = len(parse_policy(policy).findings)
    assert total >= 2800
    reply = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy))
    assert len(reply.findings) == 100
    last = reply.findings[-1]
    assert last.code == "TOO_MANY_FINDINGS"
    assert last.severity == pb.Finding.SEVERITY_ERROR
    assert f"{total - 99} more findings" in last.message
    assert reply.ByteSize() < 64 * 1024


@pytest.mark.parametrize("validate_only", [False, True])
async def test_a_put_with_400_bad_principals_gets_its_details_in_a_trailer_under_8kib(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], validate_only: bool
) -> None:
    bad = [f"arn:aws:iam::{ACCOUNT}:nobody/{i:04d}" + "x" * 30 for i in range(400)]
    policy = json.loads(policy_for())
    policy["Statement"].append(
        {"Effect": "Allow", "Principal": {"AWS": bad}, "Action": "kms:Decrypt", "Resource": "*"}
    )
    text = json.dumps(policy)
    assert len(text) < 32_768
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=text, validate_only=validate_only)
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY")
    assert trailer_bytes(caught.value) < TRAILER_LIMIT
    assert details.bad_request is not None
    violations = details.bad_request.field_violations
    assert 1 < len(violations) <= 21
    assert violations[-1].reason == "TOO_MANY_FINDINGS"
    left_out = int(violations[-1].description.split()[0])
    assert left_out + len(violations) - 1 == 400
    assert "PutKeyPolicy" not in faults.kms_operations()


async def test_a_huge_echoed_value_is_clipped_in_messages_and_trailers(
    service: RunningService, key: dict[str, Any]
) -> None:
    policy = json.loads(policy_for())
    policy["Statement"][0]["Action"] = "kms:" + "A" * 30_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=json.dumps(policy))
        )
    assert trailer_bytes(caught.value) < TRAILER_LIMIT
    assert len(caught.value.details() or "") <= 512
    reply = await service.stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(policy=json.dumps(policy))
    )
    assert all(len(f.message) <= 512 for f in reply.findings)
