"""Shared reads through the real server: concurrent reads of a key share one KMS call,
and a caller that wrote and then reads sees its write, even while an older read of the
same key is still on its way back from KMS. A joined read is never failed by what was
the other call's own (its rate buckets, its deadline), never waits past its own deadline,
and under per-caller sessions never gets another caller's answer."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service import metrics
from kms_policy_service.ratelimit import Rate
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.integration.test_accounts import (
    MEMBER,
    OTHER_MEMBER,
    OTHER_ROLE,
    ROLE,
    as_caller,
    member_key,
)
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until

ATTACKER = "spiffe://cluster.local/ns/evil/sa/attacker"
VICTIM = "spiffe://cluster.local/ns/payments/sa/api"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
UNTAGGABLE = "spiffe://cluster.local/ns/team/sa/" + "a" * 240  # too long for a session tag
PROXY = (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    values: dict[str, Any] = dict(getattr(request, "param", {}))
    if "authz" in values:
        authz = tmp_path / "authz.yaml"
        authz.write_text(values.pop("authz"))
        values["authz_policy"] = str(authz)
    return values


async def get_as(service: RunningService, key_id: str, who: str, **kw: Any) -> Any:
    return await service.stub.GetKeyPolicy(
        pb.GetKeyPolicyRequest(key_id=key_id), metadata=as_caller(who), **kw
    )


def a_policy(sid: str) -> str:
    return policy_for(
        extra=[
            {
                "Sid": sid,
                "Effect": "Allow",
                "Principal": {"AWS": ACCOUNT},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )


async def test_a_read_after_a_write_does_not_share_an_older_read_still_in_flight(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    old, new = a_policy("Old"), a_policy("New")
    await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=old))
    # The next GetKeyPolicy is answered by KMS at once, and its answer arrives 2 s late.
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=2.0, times=1))
    slow = asyncio.ensure_future(
        service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
    )
    await until(
        lambda: any(s.applied for s in faults.requests("GetKeyPolicy")),
        what="KMS answered the slow read",
    )
    await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=new))
    fresh = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
    assert fresh.policy == new  # not the answer of the read sent before the write
    assert not slow.done()  # the older read was still in flight all along
    assert (await slow).policy == old  # it began before the write: either answer is right
    assert len(faults.requests("GetKeyPolicy")) == 2


async def test_reads_while_one_is_in_flight_share_its_kms_call(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=1.0, times=1))
    first = asyncio.ensure_future(
        service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
    )
    await until(lambda: bool(faults.requests("GetKeyPolicy")), what="the first read sent")
    later = [
        service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
        for _ in range(20)
    ]
    replies = await asyncio.gather(first, *later)
    assert {r.policy for r in replies} == {replies[0].policy}
    assert len(faults.requests("GetKeyPolicy")) == 1  # 21 reads, one KMS call


def coalescing_waits() -> float:
    return float(metrics.read_coalescing_waits_total.labels("policy")._value.get())


@pytest.mark.parametrize("settings_overrides", [{"read_coalescing_window": 0.05}], indirect=True)
async def test_a_hot_keys_next_read_waits_the_window_and_later_reads_join_it(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    def get() -> Any:
        return service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)

    # Two reads share one KMS call (its answer held 1 s): the key is hot.
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=1.0, times=1))
    first = asyncio.ensure_future(get())
    await until(lambda: bool(faults.requests("GetKeyPolicy")), what="the first read sent")
    await asyncio.gather(first, get())
    assert len(faults.requests("GetKeyPolicy")) == 1
    before = coalescing_waits()
    # The next read waits 50 ms before its KMS call goes out (held 1 s again, so that the
    # other read joins it however late it is scheduled).
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=1.0, times=1))
    replies = await asyncio.gather(get(), get())
    assert coalescing_waits() == before + 1
    assert replies[0].policy == replies[1].policy
    assert len(faults.requests("GetKeyPolicy")) == 2  # two reads, one more KMS call


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "authz": f"rules:\n  - callers: ['{ATTACKER}', '{VICTIM}']\n"
            "    actions: ['GetKeyPolicy']\n    keys: ['*']\n",
            "trusted_proxies": PROXY,
            # each caller: one DescribeKey and one GetKeyPolicy, then a token per 10 s
            "caller_rate_limit": Rate(0.1, 2),
            "kms_read_timeout": 0.5,
        }
    ],
    indirect=True,
)
async def test_a_joined_read_is_not_refused_for_the_other_callers_rate(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    # The attacker's first attempt times out (retryable) and its retry finds the
    # attacker's own bucket empty: RATE_LIMITED, naming the attacker's bucket.
    faults.add(Rule("GetKeyPolicy", "sleep", delay=1.0, times=1))
    attacker = asyncio.ensure_future(get_as(service, key["Arn"], ATTACKER, timeout=10))
    await until(lambda: bool(faults.requests("GetKeyPolicy")), what="the attacker's read sent")
    victim = await get_as(service, key["Arn"], VICTIM, timeout=10)  # joins, then reads itself
    assert victim.key_arn == key["Arn"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await attacker
    assert details_of(caught.value).reason == "RATE_LIMITED"
    assert ATTACKER in caught.value.details()


@pytest.mark.parametrize(
    "settings_overrides", [{"default_deadline": 1.0, "kms_read_timeout": 10.0}], indirect=True
)
async def test_a_joined_read_ends_at_its_own_deadline_not_the_leaders(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))  # resolved
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=3.0, times=1))
    leader = asyncio.ensure_future(
        service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=20)
    )
    await until(lambda: len(faults.requests("GetKeyPolicy")) == 2, what="the leader's read sent")
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # no gRPC deadline: 1 s by default
        await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not leader.done()  # it was still waiting on KMS when the follower gave up
    assert (await leader).key_arn == key["Arn"]
    assert len(faults.requests("GetKeyPolicy")) == 2  # the follower made no call of its own


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "authz": "rules:\n  - callers: ['spiffe://cluster.local/*']\n"
            f"    actions: ['GetKeyPolicy']\n    keys: ['arn:aws:kms:*:{MEMBER}:key/*']\n",
            "account_roles": {MEMBER: ROLE, OTHER_MEMBER: OTHER_ROLE},
            "caller_session_tags": True,
            "trusted_proxies": PROXY,
        }
    ],
    indirect=True,
)
async def test_under_per_caller_sessions_a_read_never_gets_another_callers_answer(
    service: RunningService, faults: KmsFaultInjector, moto_url: str
) -> None:
    arn = member_key(moto_url)["Arn"]
    with pytest.raises(grpc.aio.AioRpcError) as alone:
        await get_as(service, arn, UNTAGGABLE, timeout=10)
    assert alone.value.code() == grpc.StatusCode.PERMISSION_DENIED  # its own session: refused
    await get_as(service, arn, ADMIN, timeout=10)  # the admin's resolution is cached
    faults.add(Rule("GetKeyPolicy", "apply_then_sleep", delay=1.0, times=1))
    admin = asyncio.ensure_future(get_as(service, arn, ADMIN, timeout=10))
    await until(
        lambda: len(faults.requests("GetKeyPolicy")) == 2, what="the admin's read in flight"
    )
    with pytest.raises(grpc.aio.AioRpcError) as joined:
        await get_as(service, arn, UNTAGGABLE, timeout=10)
    assert joined.value.code() == grpc.StatusCode.PERMISSION_DENIED  # not the admin's answer
    assert (await admin).policy
