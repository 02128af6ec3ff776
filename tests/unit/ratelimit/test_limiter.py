"""The limiter: RATE_LIMITED with RetryInfo and QuotaFailure, waits bounded by the deadline."""

from __future__ import annotations

import time

import pytest

from kms_policy_service.errors import ResourceExhausted
from kms_policy_service.ratelimit import Limits, LocalStore, Rate, RateLimiter


def limiter(**limits: object) -> RateLimiter:
    return RateLimiter(Limits(**limits), LocalStore())  # type: ignore[arg-type]


async def test_a_refusal_names_the_bucket_and_when_to_retry() -> None:
    lim = limiter(operations={"PutKeyPolicy": Rate(1, 1)}, key_writes=None, max_queue_wait=0)
    deadline = time.monotonic() + 10
    await lim.acquire("PutKeyPolicy", caller="a", key="k", deadline=deadline)
    with pytest.raises(ResourceExhausted) as caught:
        await lim.acquire("PutKeyPolicy", caller="a", key="k", deadline=deadline)
    err = caught.value
    assert err.reason == "RATE_LIMITED"
    assert err.quota_violations[0].subject == "operation:PutKeyPolicy"
    assert err.retry_after is not None and 0.9 < err.retry_after <= 1.0


async def test_the_per_key_write_bucket_applies_to_puts_only() -> None:
    lim = limiter(key_writes=Rate(1, 1), max_queue_wait=0)
    deadline = time.monotonic() + 10
    await lim.acquire("PutKeyPolicy", caller="a", key="k1", deadline=deadline)
    await lim.acquire("PutKeyPolicy", caller="a", key="k2", deadline=deadline)
    with pytest.raises(ResourceExhausted) as caught:
        await lim.acquire("PutKeyPolicy", caller="b", key="k1", deadline=deadline)
    assert caught.value.quota_violations[0].subject == "key:k1"
    await lim.acquire("GetKeyPolicy", caller="a", key="k1", deadline=deadline)


async def test_a_call_waits_for_its_token_but_never_past_its_deadline() -> None:
    lim = limiter(operations={"GetKeyPolicy": Rate(20, 1)}, max_queue_wait=2)
    now = time.monotonic()
    await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=now + 10)
    await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=now + 10)  # waits ~50 ms
    assert time.monotonic() - now >= 0.04
    with pytest.raises(ResourceExhausted):  # the next token is 50 ms away; 10 ms are left
        await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=time.monotonic() + 0.01)


async def test_the_per_caller_bucket_refunds_when_the_shared_one_refuses() -> None:
    lim = limiter(operations={"GetKeyPolicy": Rate(1, 1)}, caller=Rate(1, 2), max_queue_wait=0)
    deadline = time.monotonic() + 10
    await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=deadline)
    with pytest.raises(ResourceExhausted) as caught:
        await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=deadline)
    assert caught.value.quota_violations[0].subject == "operation:GetKeyPolicy"


async def test_no_room_to_queue_means_only_immediate_tokens() -> None:
    lim = limiter(operations={"GetKeyPolicy": Rate(10, 1)}, max_queue_wait=2, max_waiters=0)
    deadline = time.monotonic() + 10
    await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=deadline)
    with pytest.raises(ResourceExhausted):
        await lim.acquire("GetKeyPolicy", caller="a", key=None, deadline=deadline)
