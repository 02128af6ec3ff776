"""Safe concurrent updates: with an etag, exactly one of many concurrent editors wins,
in one replica and across two replicas sharing Redis."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import grpc

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess, loopback_service
from tests.support.redis_server import RedisServer
from tests.support.status import details_of
from tests.support.waiting import until

EDITORS = 20


def editor_policy(i: int) -> str:
    return policy_for(
        extra=[
            {
                "Sid": f"Editor{i}",
                "Effect": "Allow",
                "Principal": {"AWS": ACCOUNT},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )


async def race(
    stubs: list[pb_grpc.PolicyServiceStub], key_arn: str, etag: str
) -> tuple[Counter[str], list[int]]:
    outcomes: Counter[str] = Counter()
    winners: list[int] = []

    async def edit(i: int) -> None:
        try:
            await stubs[i % len(stubs)].PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key_arn, policy=editor_policy(i), etag=etag),
                timeout=20,
            )
            outcomes["OK"] += 1
            winners.append(i)
        except grpc.aio.AioRpcError as exc:
            details = details_of(exc)
            outcomes[f"{details.code.name}:{details.reason}"] += 1
            if details.reason == "ETAG_MISMATCH":
                assert details.error_info.metadata["currentEtag"] != etag

    await asyncio.gather(*(edit(i) for i in range(EDITORS)))
    return outcomes, winners


async def final_policy_sids(stub: pb_grpc.PolicyServiceStub, key_arn: str) -> set[str]:
    got = await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_arn))
    return {s.get("Sid", "") for s in json.loads(got.policy)["Statement"]}


async def test_twenty_concurrent_puts_with_one_etag_have_one_winner(
    service: RunningService, key: dict[str, Any]
) -> None:
    current = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    outcomes, winners = await race([service.stub], key["Arn"], current.etag)
    assert outcomes == Counter({"OK": 1, "ABORTED:ETAG_MISMATCH": EDITORS - 1})
    assert f"Editor{winners[0]}" in await final_policy_sids(service.stub, key["Arn"])


async def test_two_replicas_sharing_redis_also_have_one_winner(
    faults: KmsFaultInjector, redis_server: RedisServer, key: dict[str, Any]
) -> None:
    args = [
        *loopback_service(on=faults.url),
        "--rate-limit-backend",
        redis_server.url,
    ]
    procs = [ServiceProcess(args).start() for _ in range(2)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in procs]
    try:
        stubs = [pb_grpc.PolicyServiceStub(c) for c in channels]
        current = await stubs[0].GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
        await stubs[1].GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
        outcomes, winners = await race(stubs, key["Arn"], current.etag)
        assert outcomes == Counter({"OK": 1, "ABORTED:ETAG_MISMATCH": EDITORS - 1})
        assert f"Editor{winners[0]}" in await final_policy_sids(stubs[1], key["Arn"])
    finally:
        for c in channels:
            await c.close()
        for p in procs:
            p.stop()


async def test_without_an_etag_writes_are_last_writer_wins(
    service: RunningService, key: dict[str, Any]
) -> None:
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=editor_policy(1))
    )
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=editor_policy(2))
    )
    assert "Editor2" in await final_policy_sids(service.stub, key["Arn"])


async def test_a_replica_killed_mid_write_blocks_the_key_for_one_lease_not_its_deadline(
    faults: KmsFaultInjector, redis_server: RedisServer, key: dict[str, Any]
) -> None:
    import signal

    import redis

    from kms_policy_service.locks import LOCK_PREFIX
    from tests.support.kms_faults import Rule

    args = [
        *loopback_service(on=faults.url),
        "--rate-limit-backend",
        redis_server.url,
        "--key-write-rate-limit",
        "off",
        "--lock-lease",
        "1.5",
        "--max-deadline",
        "400000000",
        "--default-deadline",
        "10",
    ]
    doomed, survivor = ServiceProcess(args).start(), ServiceProcess(args).start()
    client = redis.Redis.from_url(redis_server.url)
    lock_key = LOCK_PREFIX + key["Arn"]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in (doomed, survivor)]
    try:
        faults.add(Rule("PutKeyPolicy", "sleep", delay=60.0, times=1))
        one_year = 365 * 24 * 3600.0
        stuck = asyncio.ensure_future(
            pb_grpc.PolicyServiceStub(channels[0]).PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=editor_policy(1)),
                timeout=one_year,
            )
        )
        await until(
            lambda: any(s.operation == "PutKeyPolicy" for s in faults.seen),
            what="the write to reach KMS",
        )
        # Held while the write runs: a lease never longer than one, seen renewed (its time
        # to live goes back up) past the first lease.
        ttls = [client.pttl(lock_key)]

        def renewed() -> bool:
            ttls.append(client.pttl(lock_key))
            assert 0 < ttls[-1] <= 1500, ttls
            return ttls[-1] > ttls[-2]

        await until(renewed, timeout=5, what="the lease to be renewed")
        assert doomed.proc is not None
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.wait(10)
        stuck.cancel()
        # The other replica gets the key within its lock wait (5 s), not after a year.
        await pb_grpc.PolicyServiceStub(channels[1]).PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=editor_policy(2)), timeout=30
        )
        assert "Editor2" in await final_policy_sids(
            pb_grpc.PolicyServiceStub(channels[1]), key["Arn"]
        )
    finally:
        for c in channels:
            await c.close()
        doomed.stop()
        survivor.stop()
        client.close()
