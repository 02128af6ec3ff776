"""Shared reads through the real server: concurrent reads of a key share one KMS call,
and a caller that wrote and then reads sees its write, even while an older read of the
same key is still on its way back from KMS."""

from __future__ import annotations

import asyncio
from typing import Any

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.waiting import until


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
