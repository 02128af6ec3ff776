"""The in-memory backend behaves like the KmsBackend protocol says (benchmarks rely on it)."""

from __future__ import annotations

import pytest

from kms_policy_service.backend import KmsFailure
from kms_policy_service.memory_kms import MemoryKms


async def test_keys_resolve_by_arn_id_and_alias_and_policies_round_trip() -> None:
    kms = MemoryKms()
    arn = kms.create_key(alias="alias/app")
    for key_id in (
        arn,
        arn.rsplit("/", 1)[1],
        "alias/app",
        f"arn:aws:kms:us-east-1:{kms.account}:alias/app",
    ):
        assert (await kms.describe_key(key_id, region="us-east-1")).arn == arn
    await kms.put_key_policy(
        arn, "default", '{"new": 1}', bypass_lockout_check=False, region="us-east-1"
    )
    assert await kms.get_key_policy(arn, "default", region="us-east-1") == '{"new": 1}'
    assert (
        await kms.list_key_policies(arn, limit=None, marker=None, region="us-east-1")
    ).names == ("default",)
    identity = await kms.get_caller_identity()
    assert identity.account == kms.account and ":assumed-role/" in identity.arn


async def test_unknown_keys_and_policies_fail_like_kms() -> None:
    kms = MemoryKms()
    arn = kms.create_key(manager="AWS")
    assert (await kms.describe_key(arn, region="us-east-1")).aws_managed
    with pytest.raises(KmsFailure) as caught:
        await kms.describe_key("alias/missing", region="us-east-1")
    assert caught.value.code == "NotFoundException"
    with pytest.raises(KmsFailure):
        await kms.get_key_policy(arn, "AWS_RAM", region="us-east-1")
