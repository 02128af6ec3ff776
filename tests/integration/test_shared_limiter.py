"""Two replicas sharing a real redis-server stay under one configured rate together,
keep serving when Redis dies, and share the limit again when it returns."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from kms_policy_service.ratelimit.redis_store import KEY_PREFIX
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess, loopback_service
from tests.support.redis_server import RedisServer
from tests.support.waiting import until

RATE = 10  # PutKeyPolicy per second, for both replicas together
OFFERED = 5 * RATE


@pytest.fixture
def replicas(faults: KmsFaultInjector, redis_server: RedisServer) -> Iterator[list[ServiceProcess]]:
    args = [
        *loopback_service(on=faults.url),
        "--rate-limit-backend",
        redis_server.url,
        "--kms-rate-limit",
        f"PutKeyPolicy={RATE}:1",
        "--key-write-rate-limit",
        "off",
        "--max-queue-wait",
        "0",
        "--rate-limit-fallback-fraction",
        "0.5",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    procs = [ServiceProcess(args).start() for _ in range(2)]
    yield procs
    for p in procs:
        p.stop()


async def offer(
    stubs: list[pb_grpc.PolicyServiceStub], key_arn: str, seconds: float
) -> Counter[str]:
    """Offer OFFERED Puts per second for `seconds`, alternating replicas; count outcomes."""
    policy = policy_for()
    outcomes: Counter[str] = Counter()

    async def one(stub: pb_grpc.PolicyServiceStub) -> None:
        try:
            await stub.PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key_arn, policy=policy), timeout=5
            )
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            outcomes[exc.code().name] += 1

    tasks = []
    start = time.monotonic()
    for i in range(int(OFFERED * seconds)):
        delay = start + i / OFFERED - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(stubs[i % len(stubs)])))
    await asyncio.gather(*tasks)
    return outcomes


def is_degraded(replica: ServiceProcess) -> bool:
    """The replica's kms_policy_ratelimit_backend_degraded gauge, scraped from /metrics."""
    port = next(int(r["port"]) for r in replica.logs if r.get("message") == "metrics listener")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return "kms_policy_ratelimit_backend_degraded 1.0" in text


async def until_shared_again(
    replicas: list[ServiceProcess], stubs: list[pb_grpc.PolicyServiceStub], key_arn: str
) -> None:
    """Send Puts through each degraded replica (a replica retries Redis only on a call)
    until every replica reports the shared limiter reachable again; bounded."""

    async def all_shared() -> bool:
        waiting = [
            stub
            for replica, stub in zip(replicas, stubs, strict=True)
            if await asyncio.to_thread(is_degraded, replica)
        ]
        for stub in waiting:
            try:
                await stub.PutKeyPolicy(
                    pb.PutKeyPolicyRequest(key_id=key_arn, policy=policy_for()), timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        return not waiting

    await until(all_shared, timeout=15, what="every replica to find Redis again", interval=0.1)


async def until_bucket_full(redis_server: RedisServer) -> None:
    """Wait (bounded) until the shared PutKeyPolicy bucket in Redis has refilled: its GCRA
    theoretical arrival time is not after Redis's clock."""
    client = aioredis.from_url(redis_server.url)
    try:

        async def full() -> bool:
            tat = await client.get(KEY_PREFIX + "operation:PutKeyPolicy")
            seconds, micros = await client.time()
            return tat is None or float(tat) <= seconds * 1000 + micros / 1000

        await until(full, what="the shared bucket to refill")
    finally:
        await client.aclose()


def within(measured: int, expected: float, tolerance: float = 0.10) -> bool:
    return abs(measured - expected) <= tolerance * expected


@pytest.mark.slow
async def test_two_replicas_share_the_rate_survive_redis_loss_and_recover(
    replicas: list[ServiceProcess], redis_server: RedisServer, key: dict[str, Any]
) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in replicas]
    stubs = [pb_grpc.PolicyServiceStub(c) for c in channels]
    try:
        for stub in stubs:  # warm up: resolve the key in each replica, outside the window
            await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
        assert not any([await asyncio.to_thread(is_degraded, r) for r in replicas])
        await until_bucket_full(redis_server)

        shared = await offer(stubs, key["Arn"], 3.0)
        assert set(shared) <= {"OK", "RESOURCE_EXHAUSTED"}, shared
        # Shared: about RATE for both replicas together (two separate buckets would let
        # twice as many through); the margin absorbs a busy machine's scheduling.
        assert within(shared["OK"], RATE * 3.0, tolerance=0.25), shared

        redis_server.kill()
        degraded = await offer(stubs, key["Arn"], 2.0)
        # No request fails for the outage: each replica falls back to half the rate.
        assert set(degraded) <= {"OK", "RESOURCE_EXHAUSTED"}, degraded
        assert degraded["OK"] > 0
        assert within(degraded["OK"], RATE * 2.0, tolerance=0.25), degraded

        assert all([await asyncio.to_thread(is_degraded, r) for r in replicas])

        redis_server.start()
        # Let each replica find Redis again (a pooled connection may still be the dead
        # one), then let the bucket refill: the window measures the restored shared limit.
        await until_shared_again(replicas, stubs, key["Arn"])
        await until_bucket_full(redis_server)
        recovered = await offer(stubs, key["Arn"], 3.0)
        assert set(recovered) <= {"OK", "RESOURCE_EXHAUSTED"}, recovered
        assert within(recovered["OK"], RATE * 3.0, tolerance=0.25), recovered

        def logged_both() -> bool:  # log records are written by a background thread
            logs = [r.get("message", "") for p in replicas for r in p.drain_logs()]
            return any("unreachable" in m for m in logs) and any(
                "reachable again" in m for m in logs
            )

        await until(logged_both, timeout=2, what="the outage and recovery logged")
    finally:
        for c in channels:
            await c.close()
