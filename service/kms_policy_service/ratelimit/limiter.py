"""The limiter the KMS gateway draws a token from for every attempt.

Per KMS operation, per caller, per key for writes, and per account and Region (KMS
quotas are per account and Region: one account's callers must not spend another's).
A call waits for its token at most min(max_queue_wait, its remaining deadline); otherwise it is
refused at once with RESOURCE_EXHAUSTED (RATE_LIMITED), RetryInfo and a
QuotaFailure naming the bucket. The number of waiters is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kms_policy_service import metrics
from kms_policy_service.backend import Operation
from kms_policy_service.errors import QuotaViolation, ResourceExhausted
from kms_policy_service.ratelimit.gcra import Bucket, Decision, MemoryStore
from kms_policy_service.settings import (
    DEFAULT_KEY_WRITE_RATE,
    DEFAULT_OPERATION_RATES,
    Rate,
)

WRITE_OPERATION = Operation.PUT_KEY_POLICY


class Limiter(Protocol):
    async def acquire(
        self,
        operation: str,
        *,
        caller: str,
        key: str | None,
        deadline: float,
        account: str | None = None,
    ) -> None:
        """Take one token for a KMS attempt, waiting at most until `deadline` (monotonic)."""


class SharedStore(Protocol):
    degraded: bool

    async def reserve(self, buckets: Sequence[Bucket], max_wait: float) -> Decision: ...


class LocalStore:
    """A MemoryStore behind the async SharedStore interface (the default backend)."""

    degraded = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.memory = MemoryStore(clock)

    async def reserve(self, buckets: Sequence[Bucket], max_wait: float) -> Decision:
        return self.memory.reserve(buckets, max_wait)


class NoLimit:
    """Admits everything at once (tests and benchmarks of other parts)."""

    async def acquire(
        self,
        operation: str,
        *,
        caller: str,
        key: str | None,
        deadline: float,
        account: str | None = None,
    ) -> None:
        return None


@dataclass(frozen=True)
class Limits:
    operations: Mapping[str, Rate] = field(default_factory=lambda: dict(DEFAULT_OPERATION_RATES))
    caller: Rate | None = None
    key_writes: Rate | None = DEFAULT_KEY_WRITE_RATE
    max_queue_wait: float = 2.0
    max_waiters: int = 256
    account: Rate | None = None  # per account and Region ("ACCOUNT:REGION"), all operations


class RateLimiter:
    def __init__(
        self,
        limits: Limits,
        shared: SharedStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.shared = shared
        self._local = MemoryStore(clock)  # per-caller buckets are per replica
        self._clock = clock
        self._operation_buckets = {
            op: Bucket(f"operation:{op}", r) for op, r in limits.operations.items()
        }
        self.waiters = 0

    async def acquire(
        self,
        operation: str,
        *,
        caller: str,
        key: str | None,
        deadline: float,
        account: str | None = None,
    ) -> None:
        now = self._clock()
        max_wait = max(0.0, min(self.limits.max_queue_wait, deadline - now))
        if self.waiters >= self.limits.max_waiters:
            max_wait = 0.0  # no room to queue: only an immediate token will do
        local = [Bucket(f"caller:{caller}", self.limits.caller)] if self.limits.caller else []
        shared = (
            [self._operation_buckets[operation]] if operation in self._operation_buckets else []
        )
        if key is not None and operation == WRITE_OPERATION and self.limits.key_writes:
            shared.append(Bucket(f"key:{key}", self.limits.key_writes))
        if account is not None and self.limits.account:
            shared.append(Bucket(f"account:{account}", self.limits.account))
        first = self._local.reserve(local, max_wait) if local else Decision(True, 0.0, 0.0)
        if not first.allowed:
            raise _refused(first)
        second = await self.shared.reserve(shared, max_wait)
        if not second.allowed:
            self._local.refund(local)
            raise _refused(second)
        wait = max(first.wait, second.wait)
        if wait > 0:
            metrics.child(metrics.ratelimit_waits_total, operation).inc()
            metrics.child(metrics.ratelimit_wait_seconds, operation).observe(wait)
            self.waiters += 1
            try:
                await asyncio.sleep(wait)
            finally:
                self.waiters -= 1


def _refused(decision: Decision) -> ResourceExhausted:
    assert decision.bucket is not None
    bucket = decision.bucket
    metrics.child(metrics.ratelimit_refusals_total, metrics.bucket_label(bucket.name)).inc()
    return ResourceExhausted(
        f"rate limit {bucket.name} ({bucket.rate}) reached; retry in {decision.retry_after:.3f}s",
        reason="RATE_LIMITED",
        metadata={"bucket": bucket.name.split(":", 1)[0]},
        retry_after=decision.retry_after,
        quota_violations=[QuotaViolation(bucket.name, f"at most {bucket.rate}")],
    )
