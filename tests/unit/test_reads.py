"""Single-flight reads: one fetch for concurrent readers, and a cancelled leader hurts nobody."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kms_policy_service import metrics
from kms_policy_service.errors import DeadlineExceeded, Unavailable
from kms_policy_service.reads import MAX_HOT_SLOTS, PolicyReads


class Fetch:
    """A fetch that counts its calls and, when gated, holds each until the gate opens."""

    def __init__(self, answer: Callable[[int], Awaitable[str]] | None = None) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self._answer = answer

    async def __call__(self) -> str:
        self.calls += 1
        if self._answer is not None:
            return await self._answer(self.calls)
        await self.gate.wait()
        return f"v{self.calls}"


async def joined(
    reads: PolicyReads, fetch: Fetch, *, deadline: float | None = None, key: str = "arn"
) -> asyncio.Future[str]:
    """Start a reader and return once it has run up to its first wait (joined or fetching)."""
    entered = asyncio.Event()

    async def reader() -> str:
        entered.set()  # no await between this and the read: it runs on in the same step
        return await reads.read(key, "default", fetch, deadline=deadline)

    task = asyncio.ensure_future(reader())
    await entered.wait()  # our wake-up is queued behind the rest of the reader's step
    return task


async def test_concurrent_identical_reads_share_one_fetch() -> None:
    reads = PolicyReads(cache_ttl=0)
    fetch = Fetch()
    readers = [await joined(reads, fetch) for _ in range(50)]
    assert fetch.calls == 1  # the other 49 joined the first one's fetch
    fetch.gate.set()
    assert await asyncio.gather(*readers) == ["v1"] * 50
    assert await reads.read("arn", "default", fetch) == "v2"
    assert fetch.calls == 2  # no cache: the next read fetches again


async def test_a_cancelled_leader_does_not_fail_its_followers() -> None:
    reads = PolicyReads(cache_ttl=0)
    slow, own = Fetch(), Fetch()
    own.gate.set()
    leader = await joined(reads, slow)
    follower = await joined(reads, own)
    assert (slow.calls, own.calls) == (1, 0)  # the follower waits on the leader's fetch
    leader.cancel()
    assert await follower == "v1"  # it read again, itself
    assert (slow.calls, own.calls) == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_follower_retries_when_the_leaders_deadline_ran_out() -> None:
    reads = PolicyReads(cache_ttl=0)
    gate = asyncio.Event()

    async def expire(_: int) -> str:
        await gate.wait()
        raise DeadlineExceeded("leader's deadline")

    expiring, own = Fetch(expire), Fetch()
    own.gate.set()
    leader = await joined(reads, expiring)
    follower = await joined(reads, own)
    assert (expiring.calls, own.calls) == (1, 0)  # the follower waits on the leader's fetch
    gate.set()
    assert await follower == "v1"
    assert (expiring.calls, own.calls) == (1, 1)
    with pytest.raises(DeadlineExceeded):
        await leader


async def test_an_error_reaches_every_reader_of_the_fetch_and_is_not_cached() -> None:
    reads = PolicyReads(cache_ttl=60)
    gate = asyncio.Event()

    async def fail_first(call: int) -> str:
        if call == 1:
            await gate.wait()
            raise Unavailable("KMS is down")
        return f"v{call}"

    fetch = Fetch(fail_first)
    readers = [await joined(reads, fetch) for _ in range(10)]
    gate.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert fetch.calls == 1
    assert all(isinstance(r, Unavailable) and str(r) == "KMS is down" for r in results), results
    assert await reads.read("arn", "default", fetch) == "v2"  # the failure was not cached
    assert fetch.calls == 2


async def test_the_cache_serves_repeated_reads_and_a_write_invalidates_it() -> None:
    reads = PolicyReads(cache_ttl=60)
    fetch = Fetch()
    fetch.gate.set()
    assert await reads.read("arn", "default", fetch) == "v1"
    assert await reads.read("arn", "default", fetch) == "v1"  # cached
    assert fetch.calls == 1
    reads.invalidate("arn", "default")
    assert await reads.read("arn", "default", fetch) == "v2"


async def test_a_write_detaches_the_fetch_in_flight_from_later_readers() -> None:
    reads = PolicyReads(cache_ttl=0)
    before, after = Fetch(), Fetch()
    early = await joined(reads, before)
    reads.invalidate("arn", "default")  # a Put through this replica
    late = await joined(reads, after)
    assert (before.calls, after.calls) == (1, 1)  # the late reader did not join
    joiner = await joined(reads, Fetch())  # joins the late reader's fetch, not the early one
    after.gate.set()
    # bounded: a joiner wrongly waiting on the early (gated) fetch fails, not hangs
    assert await asyncio.wait_for(asyncio.gather(late, joiner), timeout=5) == ["v1", "v1"]
    assert not early.done()
    before.gate.set()
    assert await early == "v1"


async def test_a_fetch_that_began_before_a_write_is_not_cached_after_it() -> None:
    reads = PolicyReads(cache_ttl=60)
    before = Fetch()
    early = await joined(reads, before)
    reads.invalidate("arn", "default")
    before.gate.set()
    await early
    fresh = Fetch()
    fresh.gate.set()
    assert await reads.read("arn", "default", fresh) == "v1"
    assert fresh.calls == 1  # the early answer was not cached over the write
    assert await reads.read("arn", "default", fresh) == "v1"
    assert fresh.calls == 1  # this one was


async def at_once(number: int) -> str:
    return f"v{number}"  # answers without yielding, as a fetch on a busy loop nearly does


async def make_hot(reads: PolicyReads, key: str = "arn") -> None:
    """Two concurrent reads share one fetch: the slot is now hot."""
    gated = Fetch()
    readers = [await joined(reads, gated, key=key) for _ in range(2)]
    assert gated.calls == 1  # the second joined the first
    gated.gate.set()
    await asyncio.gather(*readers)


def waits() -> float:
    return float(metrics.read_coalescing_waits_total.labels("policy")._value.get())


def in_window(reads: PolicyReads) -> Any:
    """The fetch of ("arn", "default", "") while it waits out the window."""
    flight = reads._flight._in_flight[("arn", "default", "")]
    assert flight.go is not None, "not waiting"
    return flight


# The windows below are 30 s: a test ends in time only if the behaviour it names holds.


async def test_a_hot_keys_fetch_waits_so_later_readers_join_and_a_hurried_one_sends_it() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=30.0)
    await make_hot(reads)
    fetch = Fetch(at_once)
    readers = [await joined(reads, fetch) for _ in range(6)]  # one after another
    assert fetch.calls == 0  # the leader waits out the window; the other five joined it
    # A call with 1 s left cannot spend half of it waiting: it sends the fetch now.
    readers.append(await joined(reads, fetch, deadline=time.monotonic() + 1.0))
    async with asyncio.timeout(5):
        assert await asyncio.gather(*readers) == ["v1"] * 7
    assert fetch.calls == 1  # without the window each would have made its own


async def test_without_a_window_a_fetch_is_over_before_later_readers_arrive() -> None:
    reads = PolicyReads(cache_ttl=0)
    await make_hot(reads)
    fetch = Fetch(at_once)
    readers = [await joined(reads, fetch) for _ in range(6)]
    assert await asyncio.gather(*readers) == [f"v{n}" for n in range(1, 7)]
    assert fetch.calls == 6


async def test_a_key_read_one_call_at_a_time_never_waits() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=30.0)
    fetch = Fetch(at_once)
    async with asyncio.timeout(5):
        for number in range(1, 4):
            assert await reads.read("arn", "default", fetch) == f"v{number}"


async def test_a_hot_key_cools_when_its_fetch_was_not_shared() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=0.01)
    await make_hot(reads)
    fetch = Fetch(at_once)
    before = waits()
    async with asyncio.timeout(5):
        assert await reads.read("arn", "default", fetch) == "v1"  # hot, so it waited alone
        assert waits() == before + 1
        for number in range(2, 5):
            assert await reads.read("arn", "default", fetch) == f"v{number}"
    assert waits() == before + 1  # not one of the later reads waited


async def test_the_wait_takes_at_most_half_of_the_deadline_left_after_the_reserve() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=30.0, reserve=0.05)
    await make_hot(reads)
    fetch = Fetch(at_once)
    began = time.monotonic()
    leader = await joined(reads, fetch, deadline=began + 0.45)
    # Half of the 0.4 s left after the reserve is still left when the fetch goes out.
    assert (began + 0.45 - 0.05) - in_window(reads).fetch_at > 0.1
    async with asyncio.timeout(5):
        assert await leader == "v1"
    # With no more than the reserve left, a call does not wait at all.
    await make_hot(reads)
    before = waits()
    assert await reads.read("arn", "default", fetch, deadline=time.monotonic() + 0.05) == "v2"
    assert waits() == before


@pytest.mark.parametrize("failure", ["cancelled", "its own deadline"])
async def test_a_call_waits_out_one_window_at_most_however_often_leaders_fail(
    failure: str,
) -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=30.0)
    await make_hot(reads)

    async def own_deadline(number: int) -> str:
        raise DeadlineExceeded("the leader's own deadline")

    leaders = [await joined(reads, Fetch(own_deadline))]
    victim_fetch = Fetch(at_once)
    victim = await joined(reads, victim_fetch)
    for _ in range(9):  # more calls that would each lead, in turn, before the victim
        leaders.append(await joined(reads, Fetch(own_deadline)))
    flight = in_window(reads)
    if failure == "cancelled":
        leaders[0].cancel()
    else:
        flight.go.set()  # the leader's fetch goes out, and fails with its own deadline
    async with asyncio.timeout(5):  # another window would be 30 s
        assert await victim == "v1"
    assert victim_fetch.calls == 1
    for leader in leaders:
        leader.cancel()
    await asyncio.gather(*leaders, return_exceptions=True)


async def test_a_write_during_the_window_leaves_later_readers_a_fetch_of_their_own() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=30.0)
    await make_hot(reads)
    before_write = Fetch(at_once)
    waiting = await joined(reads, before_write)
    reads.invalidate("arn", "default")
    after_write = Fetch(at_once)
    later = await joined(reads, after_write, deadline=time.monotonic() + 1.0)
    async with asyncio.timeout(5):
        assert await later == "v1"
    assert (after_write.calls, before_write.calls) == (1, 0)  # its own, not the waiting one
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_hot_slots_are_remembered_within_a_bound() -> None:
    reads = PolicyReads(cache_ttl=0, coalescing_window=0.05)
    for number in range(MAX_HOT_SLOTS + 50):
        await make_hot(reads, key=f"arn-{number}")  # a first read of each: no window
    assert len(reads._flight._hot) == MAX_HOT_SLOTS
