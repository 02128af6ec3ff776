"""The gateway: retries only what is retryable, within the deadline, one token per attempt."""

from __future__ import annotations

import time

import pytest

from kms_policy_service.backend import KmsFailure
from kms_policy_service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.request import RequestContext


class CountingLimiter:
    def __init__(self) -> None:
        self.tokens = 0

    async def acquire(
        self, operation: str, *, caller: str, key: str | None, deadline: float
    ) -> None:
        self.tokens += 1


def ctx(seconds: float = 5.0) -> RequestContext:
    return RequestContext("r", "Get", "local", "peer", "local", time.monotonic() + seconds)


def gateway(limiter: CountingLimiter, attempts: int = 3) -> KmsGateway:
    return KmsGateway(
        limiter, RetryPolicy(attempts, 0.001, 0.005, 0.01), max_concurrency=4, max_waiters=4
    )


def failing(*codes: str) -> object:
    remaining = list(codes)

    async def call() -> str:
        if remaining:
            raise KmsFailure(remaining.pop(0), "injected")
        return "ok"

    return call


async def test_retryable_failures_are_retried_each_with_a_token() -> None:
    limiter = CountingLimiter()
    c = ctx()
    assert (
        await gateway(limiter).call(
            "GetKeyPolicy", failing("ThrottlingException", "KMSInternalException"), ctx=c
        )
        == "ok"
    )  # type: ignore[arg-type]
    assert limiter.tokens == 3 and c.kms_attempts == 3


async def test_exhausted_retries_map_through_the_table() -> None:
    with pytest.raises(ResourceExhausted) as caught:
        await gateway(CountingLimiter()).call(
            "GetKeyPolicy", failing(*["ThrottlingException"] * 5), ctx=ctx()
        )  # type: ignore[arg-type]
    assert caught.value.reason == "KMS_THROTTLED"


async def test_limit_exceeded_on_put_is_never_retried() -> None:
    limiter = CountingLimiter()
    with pytest.raises(InvalidArgument) as caught:
        await gateway(limiter).call("PutKeyPolicy", failing("LimitExceededException"), ctx=ctx())  # type: ignore[arg-type]
    assert caught.value.reason == "POLICY_TOO_LARGE" and limiter.tokens == 1


async def test_a_slow_call_ends_at_the_deadline() -> None:
    import asyncio

    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await gateway(CountingLimiter()).call("GetKeyPolicy", slow, ctx=ctx(0.1))
    assert time.monotonic() - started < 0.5


async def test_no_retry_when_the_deadline_cannot_fit_one() -> None:
    limiter = CountingLimiter()
    g = KmsGateway(limiter, RetryPolicy(5, 10.0, 10.0, 0.01), max_concurrency=4, max_waiters=4)
    with pytest.raises(Unavailable):
        await g.call("GetKeyPolicy", failing(*["KMSInternalException"] * 5), ctx=ctx(0.5))  # type: ignore[arg-type]
    assert limiter.tokens <= 2  # a 10 s backoff never fits in 0.5 s
