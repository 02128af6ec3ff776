"""Reads: single-flight for concurrent identical reads (with a short coalescing window
for hot keys), and an optional short TTL cache.

Concurrent GetKeyPolicy calls for one key share one KMS fetch: a call joins the fetch
in flight. A Put through this replica detaches that fetch (later calls start their
own), so a caller that wrote and then reads never gets an answer fetched before its
write.

Consistency of the policy cache (off by default, `--read-cache-ttl`): a successful
Put through this replica invalidates its entry at once, so a caller reads its own
writes through the same replica. Writes through other replicas or outside the
service become visible only when the entry expires: readers may see a policy up
to TTL seconds old. Puts never read from the cache (their etag check is fresh).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from kms_policy_service import metrics
from kms_policy_service.errors import DeadlineExceeded, ResourceExhausted

T = TypeVar("T")
Slot = tuple[str, ...]
# Errors a leader's fetch ends with that say nothing about KMS's answer, only about
# the leader's call: its deadline, and its own rate buckets (which name the caller).
LEADERS_OWN = (DeadlineExceeded, ResourceExhausted)


HOT_FOR = 1.0  # seconds a slot stays hot after a fetch that was shared
MAX_HOT_SLOTS = 1024  # hot slots remembered (least recently shared forgotten)


class _Fetch(Generic[T]):
    __slots__ = ("fetch_at", "followers", "go", "result")

    def __init__(self, result: asyncio.Future[T]) -> None:
        self.result = result
        self.followers = 0
        self.go: asyncio.Event | None = None  # set while the fetch waits out the window
        self.fetch_at = 0.0  # when it goes out, if nobody makes it go sooner


class SingleFlight(Generic[T]):
    """Concurrent calls for one slot share one fetch, run in the first caller's own task.

    A follower takes the leader's answer, or an error about KMS, but not an error that
    is the leader's own (its deadline, its rate buckets, its cancellation): then the
    follower fetches again under its own context. A follower waits no longer than its
    own deadline.

    With a `window`, a hot slot (its last fetch, under a second ago, was shared) waits
    that long before its fetch goes out, so the calls that arrive meanwhile join it. On
    a busy event loop a fetch is otherwise over before more than a call or two could
    reach it; a slot read one call at a time never waits. The answer is still fetched
    after every joined call began. The wait never takes more than half of what is left
    of any sharing call's deadline (less `reserve`, the time a call keeps for itself),
    and a call waits out at most one window: one that joined a fetch and must fetch
    again (the leader's own failure) does not wait again, so failing leaders cannot
    hold the others for window after window.
    """

    def __init__(self, what: str, *, window: float = 0.0, reserve: float = 0.0) -> None:
        self._in_flight: dict[Slot, _Fetch[T]] = {}
        self._joined = metrics.child(metrics.shared_reads_total, what)
        self._waits = metrics.child(metrics.read_coalescing_waits_total, what) if window else None
        self._window = window
        self._reserve = reserve
        self._hot: OrderedDict[Slot, float] = OrderedDict()  # slot -> when a shared fetch ended

    async def read(
        self, slot: Slot, fetch: Callable[[], Awaitable[T]], *, deadline: float | None = None
    ) -> T:
        may_wait = True
        while True:
            flight = self._in_flight.get(slot)
            if flight is None:
                return await self._lead(slot, fetch, deadline, may_wait=may_wait)
            may_wait = False
            flight.followers += 1
            self._joined.inc()
            if flight.go is not None and deadline is not None:
                now = time.monotonic()
                if flight.fetch_at - now > (deadline - self._reserve - now) / 2:
                    flight.go.set()  # this call cannot spend that long waiting: go now
            shared = flight.result
            try:
                # shield: a follower giving up must not cancel the leader's fetch.
                async with asyncio.timeout(
                    None if deadline is None else max(deadline - time.monotonic(), 0.0)
                ):
                    return await asyncio.shield(shared)
            except TimeoutError:
                raise DeadlineExceeded(
                    "the call's deadline ran out waiting for a KMS read in flight"
                ) from None
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this follower was cancelled
                # the leader's caller gave up: fetch again, under our own deadline
            except LEADERS_OWN:
                pass  # the leader's deadline or buckets, not ours: fetch again under ours

    def slots(self) -> list[Slot]:
        return list(self._in_flight)

    def forget(self, slot: Slot) -> None:
        """Later calls for the slot start a fetch of their own (those joined keep theirs)."""
        self._in_flight.pop(slot, None)

    async def _lead(
        self,
        slot: Slot,
        fetch: Callable[[], Awaitable[T]],
        deadline: float | None,
        *,
        may_wait: bool,
    ) -> T:
        flight: _Fetch[T] = _Fetch(asyncio.get_running_loop().create_future())
        shared = flight.result
        self._in_flight[slot] = flight
        try:
            if may_wait and self._waits is not None and self._is_hot(slot):
                await self._coalesce(flight, deadline)
            value = await fetch()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                shared.cancel()
            else:
                shared.set_exception(exc)
                shared.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        finally:
            if self._in_flight.get(slot) is flight:  # not forgotten and replaced meanwhile
                del self._in_flight[slot]
            if self._waits is not None:
                self._remember(slot, shared=flight.followers > 0)
        shared.set_result(value)
        return value

    async def _coalesce(self, flight: _Fetch[T], deadline: float | None) -> None:
        """Wait out the window (or less: see the class), for other calls to join."""
        now = time.monotonic()
        wait = self._window
        if deadline is not None:
            wait = min(wait, (deadline - self._reserve - now) / 2)
        if wait <= 0:
            return
        assert self._waits is not None
        self._waits.inc()
        flight.go, flight.fetch_at = asyncio.Event(), now + wait
        try:
            async with asyncio.timeout(wait):
                await flight.go.wait()
        except TimeoutError:
            pass
        finally:
            flight.go = None

    def _is_hot(self, slot: Slot) -> bool:
        ended = self._hot.get(slot)
        return ended is not None and time.monotonic() - ended < HOT_FOR

    def _remember(self, slot: Slot, *, shared: bool) -> None:
        if not shared:
            self._hot.pop(slot, None)
            return
        self._hot[slot] = time.monotonic()
        self._hot.move_to_end(slot)
        if len(self._hot) > MAX_HOT_SLOTS:
            self._hot.popitem(last=False)


class PolicyReads:
    def __init__(
        self,
        *,
        cache_ttl: float,
        max_entries: int = 10_000,
        coalescing_window: float = 0.0,
        reserve: float = 0.0,
    ) -> None:
        self._ttl = cache_ttl
        self._max_entries = max_entries
        self._flight: SingleFlight[str] = SingleFlight(
            "policy", window=coalescing_window, reserve=reserve
        )
        self._cache: OrderedDict[Slot, tuple[float, str]] = OrderedDict()
        self._writes = 0  # invalidations so far: a fetch that saw one begin is not cached

    async def read(
        self,
        key_arn: str,
        name: str,
        fetch: Callable[[], Awaitable[str]],
        *,
        caller: str = "",
        deadline: float | None = None,
    ) -> str:
        """The policy of (key_arn, name): cached, joined to a read in flight, or fetched.

        `caller` is set when the fetch goes out under the caller's own session: its
        answer is then that caller's alone (another caller's session may be refused),
        shared only with its own concurrent reads and never cached.
        """
        slot = (key_arn, name, caller)
        cached = self._ttl > 0 and not caller
        if cached:
            hit = self._cache.get(slot)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        writes = self._writes
        policy = await self._flight.read(slot, fetch, deadline=deadline)
        if cached and writes == self._writes:
            self._cache[slot] = (time.monotonic() + self._ttl, policy)
            self._cache.move_to_end(slot)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return policy

    def invalidate(self, key_arn: str, name: str) -> None:
        """A write through this replica: no later read is answered from before it."""
        self._writes += 1
        self._cache.pop((key_arn, name, ""), None)
        # calls in flight are few (bounded by the RPCs in flight)
        for slot in [s for s in self._flight.slots() if s[0] == key_arn and s[1] == name]:
            self._flight.forget(slot)
