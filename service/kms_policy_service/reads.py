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
        shared = self._in_flight.get(slot)
        if shared is None:
            shared = asyncio.ensure_future(self._fetch(slot, fetch))
            self._in_flight[slot] = shared
        # shield: one caller giving up must not cancel the read the others wait on.
        return await asyncio.shield(shared)

    async def _fetch(self, slot: tuple[str, str], fetch: Callable[[], Awaitable[str]]) -> str:
        try:
            policy = await fetch()
        finally:
            self._in_flight.pop(slot, None)
        if self._ttl > 0:
            self._cache[slot] = (time.monotonic() + self._ttl, policy)
            self._cache.move_to_end(slot)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return policy

    def invalidate(self, key_arn: str, name: str) -> None:
        self._cache.pop((key_arn, name), None)
