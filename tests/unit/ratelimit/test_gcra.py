"""GCRA buckets with a controllable clock: rate, burst, bounded waits, refusals, fairness."""

from __future__ import annotations

import pytest

from kms_policy_service.ratelimit import Bucket, MemoryStore, Rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_rate_parses_rate_and_burst() -> None:
    assert Rate.parse("5") == Rate(5, 5)
    assert Rate.parse("5:2") == Rate(5, 2)
    assert Rate.parse("0.5") == Rate(0.5, 1)
    with pytest.raises(ValueError):
        Rate.parse("0")


def test_a_burst_is_let_through_at_once_then_the_rate_applies(clock: Clock) -> None:
    store = MemoryStore(clock)
    bucket = Bucket("operation:PutKeyPolicy", Rate(5, 3))
    assert [store.reserve([bucket], 0).allowed for _ in range(4)] == [True, True, True, False]
    clock.now += 0.2  # one interval: one more token
    assert store.reserve([bucket], 0).allowed
    assert not store.reserve([bucket], 0).allowed


def test_the_let_through_rate_matches_the_configured_rate(clock: Clock) -> None:
    store = MemoryStore(clock)
    bucket = Bucket("b", Rate(10, 1))
    allowed = 0
    for _ in range(1000):  # 10 s offered at 100/s, ten times the rate
        clock.now += 0.01
        allowed += store.reserve([bucket], 0).allowed
    assert 99 <= allowed <= 101


def test_a_refusal_says_when_the_next_token_frees_up(clock: Clock) -> None:
    store = MemoryStore(clock)
    bucket = Bucket("b", Rate(2, 1))
    store.reserve([bucket], 0)
    decision = store.reserve([bucket], 0)
    assert (decision.allowed, decision.bucket) == (False, bucket)
    assert decision.retry_after == pytest.approx(0.5)
    clock.now += 0.3
    assert store.reserve([bucket], 0).retry_after == pytest.approx(0.2)


def test_a_call_may_wait_within_its_bound_and_waiters_queue_in_order(clock: Clock) -> None:
    store = MemoryStore(clock)
    bucket = Bucket("b", Rate(4, 1))
    assert store.reserve([bucket], 1.0).wait == 0
    waits = [store.reserve([bucket], 1.0).wait for _ in range(4)]
    assert waits == pytest.approx([0.25, 0.5, 0.75, 1.0])
    refused = store.reserve([bucket], 1.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.25)


def test_all_buckets_or_none(clock: Clock) -> None:
    store = MemoryStore(clock)
    op = Bucket("operation:PutKeyPolicy", Rate(10, 10))
    key = Bucket("key:k", Rate(1, 1))
    assert store.reserve([op, key], 0).allowed
    refused = store.reserve([op, key], 0)
    assert refused.bucket == key
    # the refused call took nothing from the operation bucket: 9 more fit
    assert sum(store.reserve([op], 0).allowed for _ in range(10)) == 9


def test_a_noisy_caller_cannot_starve_another(clock: Clock) -> None:
    store = MemoryStore(clock)
    op = Bucket("operation:GetKeyPolicy", Rate(10, 10))
    noisy = Bucket("caller:noisy", Rate(5, 5))
    quiet = Bucket("caller:quiet", Rate(5, 5))
    noisy_ok = sum(store.reserve([noisy, op], 0).allowed for _ in range(100))
    quiet_ok = sum(store.reserve([quiet, op], 0).allowed for _ in range(5))
    assert (noisy_ok, quiet_ok) == (5, 5)


def test_refund_gives_the_token_back(clock: Clock) -> None:
    store = MemoryStore(clock)
    bucket = Bucket("b", Rate(1, 1))
    store.reserve([bucket], 0)
    store.refund([bucket])
    assert store.reserve([bucket], 0).allowed


def test_idle_buckets_are_forgotten(clock: Clock) -> None:
    store = MemoryStore(clock)
    for i in range(1000):
        store.reserve([Bucket(f"caller:{i}", Rate(100, 1))], 0)
    clock.now += 1
    store.reserve([Bucket("caller:last", Rate(100, 1))], 0)
    assert len(store) == 1
