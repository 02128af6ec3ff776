"""GCRA token buckets (the generic cell rate algorithm), kept in memory.

A bucket of `rate` tokens per second and `burst` capacity is one number, the
theoretical arrival time (TAT). A request that may wait up to `max_wait`
seconds reserves its token at once and sleeps until it is due, so waiters are
served in arrival order and the let-through rate never exceeds the limit.
The Redis store runs the same arithmetic in a Lua script.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kms_policy_service.settings import Rate as Rate  # the configured value type

_EPSILON = 1e-9  # seconds: float rounding must not cost a burst its last token


@dataclass(frozen=True)
class Bucket:
    """A named bucket: `name` is what a QuotaFailure reports (e.g. `operation:PutKeyPolicy`)."""

    name: str
    rate: Rate


@dataclass(frozen=True)
class Decision:
    allowed: bool
    wait: float  # seconds to sleep before the token is due (allowed)
    retry_after: float  # seconds until a token frees up (refused)
    bucket: Bucket | None = None  # the bucket that refused


class MemoryStore:
    """Buckets in this process. Idle buckets are forgotten, so memory stays bounded."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._max_buckets = max_buckets

    def reserve(self, buckets: Sequence[Bucket], max_wait: float) -> Decision:
        """Take one token from every bucket, or from none; never waits itself."""
        now = self._clock()
        due = now
        planned: list[tuple[Bucket, float]] = []
        for bucket in buckets:
            tat = max(self._tat.get(bucket.name, now), now)
            new_tat = tat + bucket.rate.interval
            allow_at = new_tat - bucket.rate.burst * bucket.rate.interval
            if allow_at - now > max_wait + _EPSILON:
                return Decision(False, 0.0, allow_at - now, bucket)
            due = max(due, allow_at)
            planned.append((bucket, new_tat))
        for bucket, new_tat in planned:
            self._tat[bucket.name] = new_tat
            self._tat.move_to_end(bucket.name)
        self._forget_idle(now)
        return Decision(True, max(0.0, due - now), 0.0)

    def refund(self, buckets: Sequence[Bucket]) -> None:
        """Give back one token each (a reservation that was not used)."""
        for bucket in buckets:
            if bucket.name in self._tat:
                self._tat[bucket.name] -= bucket.rate.interval

    def _forget_idle(self, now: float) -> None:
        # A bucket whose TAT is in the past is full again: forgetting it changes nothing.
        while self._tat:
            name, tat = next(iter(self._tat.items()))
            if tat > now and len(self._tat) <= self._max_buckets:
                break
            del self._tat[name]

    def __len__(self) -> int:
        return len(self._tat)
