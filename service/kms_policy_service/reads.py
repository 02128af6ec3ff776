"""Policy reads: single-flight for concurrent identical reads, and an optional short TTL cache.

Consistency of the cache (off by default, `--read-cache-ttl`): a successful Put
through this replica invalidates its entry at once, so a caller reads its own
writes through the same replica. Writes through other replicas or outside the
service become visible only when the entry expires: readers may see a policy up
to TTL seconds old. Puts never read from the cache (their etag check is fresh).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from kms_policy_service.errors import DeadlineExceeded


class PolicyReads:
    def __init__(self, *, cache_ttl: float, max_entries: int = 10_000) -> None:
        self._ttl = cache_ttl
        self._max_entries = max_entries
        self._in_flight: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._cache: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    async def read(self, key_arn: str, name: str, fetch: Callable[[], Awaitable[str]]) -> str:
        """The policy of (key_arn, name): cached, joined to a read in flight, or fetched."""
        slot = (key_arn, name)
        if self._ttl > 0:
            hit = self._cache.get(slot)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        while True:
            shared = self._in_flight.get(slot)
            if shared is None:
                return await self._lead(slot, fetch)
            try:
                # shield: a follower giving up must not cancel the leader's read.
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                if not shared.cancelled():
                    raise  # this follower was cancelled
                # the leader's caller gave up: read again, under our own deadline
            except DeadlineExceeded:
                pass  # the leader's deadline, not ours: read again under our own

    async def _lead(self, slot: tuple[str, str], fetch: Callable[[], Awaitable[str]]) -> str:
        """Fetch in the caller's own task (no extra task); followers wait on a future."""
        shared: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._in_flight[slot] = shared
        try:
            policy = await fetch()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                shared.cancel()
            else:
                shared.set_exception(exc)
                shared.exception()  # retrieved: no "never retrieved" warning without followers
            raise
        finally:
            self._in_flight.pop(slot, None)
        shared.set_result(policy)
        if self._ttl > 0:
            self._cache[slot] = (time.monotonic() + self._ttl, policy)
            self._cache.move_to_end(slot)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return policy

    def invalidate(self, key_arn: str, name: str) -> None:
        self._cache.pop((key_arn, name), None)
