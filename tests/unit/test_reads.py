"""Single-flight reads: one fetch for concurrent readers, and a cancelled leader hurts nobody."""

from __future__ import annotations

import asyncio

import pytest

from kms_policy_service.errors import DeadlineExceeded
from kms_policy_service.reads import PolicyReads


async def test_concurrent_identical_reads_share_one_fetch() -> None:
    reads = PolicyReads(cache_ttl=0)
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "policy"

    results = await asyncio.gather(*(reads.read("arn", "default", fetch) for _ in range(50)))
    assert results == ["policy"] * 50 and calls == 1
    await reads.read("arn", "default", fetch)
    assert calls == 2  # no cache: the next read fetches again


async def test_a_cancelled_leader_does_not_fail_its_followers() -> None:
    reads = PolicyReads(cache_ttl=0)
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "first"

    leader = asyncio.ensure_future(reads.read("arn", "default", slow))
    await started.wait()
    follower = asyncio.ensure_future(
        reads.read("arn", "default", lambda: asyncio.sleep(0, "second"))
    )
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await follower == "second"  # it read again, itself
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_follower_retries_when_the_leaders_deadline_ran_out() -> None:
    reads = PolicyReads(cache_ttl=0)

    async def expiring() -> str:
        await asyncio.sleep(0.02)
        raise DeadlineExceeded("leader's deadline")

    async def fine() -> str:
        return "ok"

    leader = asyncio.ensure_future(reads.read("arn", "default", expiring))
    await asyncio.sleep(0)
    follower = await reads.read("arn", "default", fine)
    assert follower == "ok"
    with pytest.raises(DeadlineExceeded):
        await leader


async def test_errors_reach_every_reader_and_the_cache_is_invalidated_by_writes() -> None:
    reads = PolicyReads(cache_ttl=60)
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        return f"v{calls}"

    assert await reads.read("arn", "default", fetch) == "v1"
    assert await reads.read("arn", "default", fetch) == "v1"  # cached
    reads.invalidate("arn", "default")
    assert await reads.read("arn", "default", fetch) == "v2"
