"""GCRA buckets shared by every replica through Redis, with a local fallback.

Why a Lua script of our own rather than a library: the whole decision (all of a
call's buckets, all-or-nothing, with a bounded wait) must be one atomic step,
on Redis's clock rather than each replica's, and the arithmetic must be exactly
that of gcra.MemoryStore so both backends behave alike. GCRA keeps one number
per bucket and needs ~20 lines of Lua; the libraries we looked at either run
one bucket per call or do not support reservations with a bounded wait.

If Redis is unreachable the store answers from local buckets at a configured
fraction of each rate (N replicas each at rate/N keep the total near the limit),
logs it once, reports `degraded`, and tries Redis again every second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kms_policy_service.ratelimit.gcra import Bucket, Decision, MemoryStore, Rate

log = logging.getLogger(__name__)

KEY_PREFIX = "{kmspolicy}:rl:"  # one hash slot: a script's keys must share it in Redis Cluster
RETRY_INTERVAL_SECONDS = 1.0

# KEYS: bucket keys. ARGV[1]: max wait (ms); then interval (ms) and burst per key.
# Returns {allowed, wait_or_retry_after_ms (string), index of the refusing bucket}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local max_wait = tonumber(ARGV[1])
local due = now
local new_tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at - now > max_wait + 0.000001 then
    return {0, tostring(allow_at - now), i}
  end
  if allow_at > due then due = allow_at end
  new_tats[i] = new_tat
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tostring(new_tats[i]), 'PX', math.ceil(new_tats[i] - now) + 1000)
end
return {1, tostring(due - now), 0}
"""


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        fallback_fraction: float,
        timeout: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis: Any = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=5
        )
        self._script = self._redis.register_script(_GCRA)
        self.client = self._redis  # shared with the key locks: one pool per replica
        self._fraction = fallback_fraction
        self._fallback = MemoryStore(clock)
        self._clock = clock
        self._retry_at = 0.0
        self.degraded = False
        self._scaled: dict[Bucket, Bucket] = {}

    async def reserve(self, buckets: Sequence[Bucket], max_wait: float) -> Decision:
        if not buckets:
            return Decision(True, 0.0, 0.0)
        if self.degraded and self._clock() < self._retry_at:
            return self._local(buckets, max_wait)
        args: list[float] = [max_wait * 1000]
        for b in buckets:
            args += [b.rate.interval * 1000, b.rate.burst]
        try:
            allowed, value, index = await self._script(
                keys=[KEY_PREFIX + b.name for b in buckets], args=args
            )
        except (RedisError, OSError) as exc:
            if not self.degraded:
                log.warning(
                    "shared rate limiter unreachable (%s); using local buckets at %.0f%% of "
                    "each rate until it returns",
                    type(exc).__name__,
                    self._fraction * 100,
                )
            self.degraded = True
            self._retry_at = self._clock() + RETRY_INTERVAL_SECONDS
            return self._local(buckets, max_wait)
        if self.degraded:
            log.warning("shared rate limiter reachable again")
            self.degraded = False
        seconds = float(value) / 1000
        if int(allowed):
            return Decision(True, seconds, 0.0)
        return Decision(False, 0.0, seconds, buckets[int(index) - 1])

    def _local(self, buckets: Sequence[Bucket], max_wait: float) -> Decision:
        scaled = [self._scale(b) for b in buckets]
        decision = self._fallback.reserve(scaled, max_wait)
        if decision.bucket is not None:
            original = buckets[scaled.index(decision.bucket)]
            return Decision(False, 0.0, decision.retry_after, original)
        return decision

    def _scale(self, bucket: Bucket) -> Bucket:
        if bucket not in self._scaled:
            rate = Rate(
                bucket.rate.rate * self._fraction, max(1, int(bucket.rate.burst * self._fraction))
            )
            self._scaled[bucket] = Bucket(bucket.name, rate)
        return self._scaled[bucket]

    async def close(self) -> None:
        await self._redis.aclose()
