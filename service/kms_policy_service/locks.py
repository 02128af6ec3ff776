"""Per-key write locks, so a read-compare-write is never interleaved with another.

Inside a replica, one asyncio.Lock per key. Across replicas, when Redis is
configured, also a Redis lock with a short lease (SET NX PX `--lock-lease`),
renewed every third of the lease while the write is in progress and released by
a compare-and-delete script on every path: a replica that dies holding a lock
blocks that key for at most one lease, whatever its caller's deadline. If Redis
is unreachable the replica goes on with its local lock only and logs it: KMS has
no conditional write, so this is best effort against writers in other replicas,
and none at all against writers outside the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger(__name__)

LOCK_PREFIX = "{kmspolicy}:lock:"
POLL_SECONDS = 0.02
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
DEFAULT_LEASE_SECONDS = 10.0


class KeyLocks:
    def __init__(self, redis: Any = None, *, lease: float = DEFAULT_LEASE_SECONDS) -> None:
        """`redis`: the shared limiter's client (one connection pool for both), or None."""
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._redis: Any = redis
        self.lease = lease
        if redis is not None:
            self._release = redis.register_script(_RELEASE)
            self._renew = redis.register_script(_RENEW)
        self._warned = False

    @asynccontextmanager
    async def hold(self, key: str, *, wait: float) -> AsyncIterator[None]:
        """Hold `key` here (and across replicas); raise TimeoutError after `wait` seconds."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + wait
            async with asyncio.timeout(max(0.0, wait)):
                await lock.acquire()
            try:
                token = await self._acquire_shared(key, self.lease, give_up)
                renewing = (
                    asyncio.create_task(self._keep_renewed(key, token))
                    if token is not None
                    else None
                )
                try:
                    yield
                finally:
                    if renewing is not None:
                        renewing.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await renewing
                    if token is not None:
                        await self._release_shared(key, token)
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _acquire_shared(self, key: str, lease: float, give_up: float) -> str | None:
        if self._redis is None:
            return None
        token = secrets.token_hex(16)
        lease_ms = max(1, int(lease * 1000))
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await self._redis.set(LOCK_PREFIX + key, token, nx=True, px=lease_ms):
                    self._warned = False
                    return token
            except (_redis_error(), OSError) as exc:
                if not self._warned:
                    log.warning(
                        "shared key lock unavailable (%s): serializing writes in this replica only",
                        type(exc).__name__,
                    )
                    self._warned = True
                return None
            if loop.time() + POLL_SECONDS > give_up:
                raise TimeoutError(f"key {key} stayed locked by another replica")
            await asyncio.sleep(POLL_SECONDS)

    async def _keep_renewed(self, key: str, token: str) -> None:
        lease_ms = max(1, int(self.lease * 1000))
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                renewed = await self._renew(keys=[LOCK_PREFIX + key], args=[token, lease_ms])
            except (_redis_error(), OSError) as exc:
                log.warning("shared key lock not renewed (%s)", type(exc).__name__)
                continue
            if not renewed:  # expired and taken: nothing more we can do mid-write
                log.warning("shared key lock for a key was lost before the write finished")
                return

    async def _release_shared(self, key: str, token: str) -> None:
        with contextlib.suppress(_redis_error(), OSError):  # else the lease expires on its own
            await self._release(keys=[LOCK_PREFIX + key], args=[token])

    def __len__(self) -> int:
        return len(self._locks)


def _redis_error() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError
