"""The servicer over the in-memory backend (the real Server on port 0, no moto): which KMS
calls each RPC makes, and in which order, for the cases that matter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from kms_policy_service import Server, Settings
from kms_policy_service.backend import default_key_policy
from kms_policy_service.memory_kms import Fault, MemoryKms
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.support.status import details_of
from tests.support.waiting import until


@pytest.fixture
def kms() -> MemoryKms:
    return MemoryKms()


@pytest.fixture
async def server(kms: MemoryKms, tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(
        listen="127.0.0.1:0",
        key_write_rate_limit=None,
        audit_log=str(tmp_path / "audit.log"),
        retry_base=0.001,
        retry_cap=0.002,
    )
    server = Server(settings, backend=kms)
    await server.startup()
    try:
        yield server
    finally:
        await server.shutdown()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[pb_grpc.PolicyServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield pb_grpc.PolicyServiceStub(channel)
    finally:
        await channel.close()


def shared_reads(read: str) -> float:
    return REGISTRY.get_sample_value("kms_policy_shared_reads_total", {"read": read}) or 0.0


def with_decrypt(account: str) -> str:
    doc = json.loads(default_key_policy(account))
    doc["Statement"].append(
        {"Sid": "D", "Effect": "Allow", "Principal": {"AWS": account}, "Action": "kms:Decrypt"}
        | {"Resource": "*"}
    )
    return json.dumps(doc)


async def test_a_put_by_alias_resolves_reads_then_writes(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    kms.create_key(alias="alias/app")
    await stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id="alias/app", policy=with_decrypt(kms.account))
    )
    # resolve, read the previous policy for the audit intent, write
    assert kms.operations() == ["DescribeKey", "GetKeyPolicy", "PutKeyPolicy"]


async def test_validate_only_and_validate_never_write(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    arn = kms.create_key()
    policy = with_decrypt(kms.account)
    await stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=arn, policy=policy, validate_only=True))
    await stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(key_id=arn, policy=policy))
    assert "PutKeyPolicy" not in kms.operations() and "GetKeyPolicy" not in kms.operations()


async def test_a_lockout_by_key_arn_is_refused_before_any_kms_call(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    arn = kms.create_key()
    lockout = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*"}
                | {"Resource": "*"}
            ],
        }
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=arn, policy=lockout))
    assert details_of(caught.value).reason == "POLICY_LOCKOUT"
    assert kms.operations() == []


async def test_an_etag_mismatch_never_writes(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    arn = kms.create_key()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=arn, policy=with_decrypt(kms.account), etag="0" * 64)
        )
    assert details_of(caught.value).reason == "ETAG_MISMATCH"
    assert kms.operations() == ["DescribeKey", "GetKeyPolicy"]


async def test_concurrent_gets_share_one_kms_read(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    arn = kms.create_key()
    await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn))
    kms.calls.clear()
    answer = asyncio.Event()  # KMS holds the first read until all 50 calls are in
    kms.faults.append(Fault("GetKeyPolicy", gate=answer, times=1))
    joined_before = shared_reads("policy")
    calls = [stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn)) for _ in range(50)]
    # One fetch held at KMS, the 49 others joined to it; then KMS answers.
    await until(lambda: shared_reads("policy") - joined_before == 49, what="49 reads joined")
    answer.set()
    replies = await asyncio.gather(*calls)
    assert len({r.etag for r in replies}) == 1
    assert kms.operations() == ["GetKeyPolicy"]


async def test_a_put_failing_at_kms_with_an_uncertain_error_is_read_back(
    stub: pb_grpc.PolicyServiceStub, kms: MemoryKms
) -> None:
    arn = kms.create_key()
    kms.faults.append(Fault("PutKeyPolicy", "KMSInternalException", http_status=500))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=arn, policy=with_decrypt(kms.account))
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    ops: list[Any] = kms.operations()
    # 3 attempts (retryable), then one read-back that finds the old policy (not applied)
    assert ops == ["DescribeKey", "GetKeyPolicy", *["PutKeyPolicy"] * 3, "GetKeyPolicy"]
