"""Key resolution over the in-memory backend: cached, single-flight, kept in the account."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest

from kms_policy_service.accounts import AccountRoles
from kms_policy_service.errors import InvalidArgument, NotFound
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.memory_kms import Fault, MemoryKms
from kms_policy_service.ratelimit import NoLimit
from kms_policy_service.request import RequestContext
from kms_policy_service.resolver import KeyResolver
from kms_policy_service.validation import parse_key_id


def ctx() -> RequestContext:
    return RequestContext("r", "GetKeyPolicy", "local", "p", "local", time.monotonic() + 5)


def resolver(
    kms: MemoryKms,
    *,
    ttl: float = 30.0,
    max_entries: int = 100,
    max_waiters: int = 8,
    accounts: AccountRoles | None = None,
    clock: Callable[[], float] = time.monotonic,
    uniform: Callable[[float, float], float] = random.uniform,
) -> KeyResolver:
    """A resolver over `kms` with no limits; `accounts` names member accounts and roles."""
    gateway = KmsGateway(
        kms,
        NoLimit(),
        RetryPolicy(1, 0.01, 0.01, 0.0),
        max_concurrency=8,
        max_waiters=max_waiters,
        home_account=kms.account,
        accounts=accounts,
    )
    return KeyResolver(
        gateway,
        account=kms.account,
        home_region="us-east-1",
        allowed_regions=frozenset(),
        ttl=ttl,
        max_entries=max_entries,
        member_accounts=frozenset(accounts.roles) if accounts else frozenset(),
        clock=clock,
        uniform=uniform,
    )


async def test_an_alias_resolves_once_and_is_then_served_from_the_cache() -> None:
    kms = MemoryKms()
    arn = kms.create_key(alias="alias/app")
    r = resolver(kms)
    first = await r.resolve(parse_key_id("alias/app"), ctx())
    second = await r.resolve(parse_key_id("alias/app"), ctx())
    assert first.arn == second.arn == arn
    assert kms.operations() == ["DescribeKey"]


async def test_without_a_ttl_every_resolution_asks_kms() -> None:
    kms = MemoryKms()
    kms.create_key(alias="alias/app")
    r = resolver(kms, ttl=0)
    for _ in range(3):
        await r.resolve(parse_key_id("alias/app"), ctx())
    assert kms.operations() == ["DescribeKey"] * 3


async def test_a_hundred_concurrent_cold_resolutions_cost_one_describe_key() -> None:
    kms = MemoryKms()
    kms.create_key(alias="alias/app")
    kms.faults.append(Fault("DescribeKey", delay=0.05))
    r = resolver(kms)
    keys = await asyncio.gather(*(r.resolve(parse_key_id("alias/app"), ctx()) for _ in range(100)))
    assert len({k.arn for k in keys}) == 1
    assert kms.operations() == ["DescribeKey"]


async def test_the_cache_holds_at_most_max_entries_least_recent_out() -> None:
    kms = MemoryKms()
    arns = [kms.create_key() for _ in range(5)]
    r = resolver(kms, max_entries=2)
    for arn in arns:
        await r.resolve(parse_key_id(arn), ctx())
    kms.calls.clear()
    await r.resolve(parse_key_id(arns[-1]), ctx())  # still cached
    await r.resolve(parse_key_id(arns[0]), ctx())  # evicted: asks again
    assert kms.operations() == ["DescribeKey"]


async def test_an_alias_that_resolves_into_another_account_is_refused() -> None:
    kms = MemoryKms()
    foreign = MemoryKms(account="999999999999").create_key()
    kms.alias("alias/sneaky", foreign)
    kms._policies[foreign] = {"default": "{}"}  # the backend knows the key
    kms._managers[foreign] = "CUSTOMER"
    with pytest.raises(InvalidArgument) as caught:
        await resolver(kms).resolve(parse_key_id("alias/sneaky"), ctx())
    assert caught.value.reason == "CROSS_ACCOUNT_KEY"


async def test_a_missing_key_is_not_found_and_not_cached() -> None:
    kms = MemoryKms()
    r = resolver(kms)
    for _ in range(2):
        with pytest.raises(NotFound):
            await r.resolve(parse_key_id("alias/missing"), ctx())
    assert kms.operations() == ["DescribeKey"] * 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refreshing_resolver(
    kms: MemoryKms, clock: Clock, uniform: Callable[[float, float], float]
) -> KeyResolver:
    return resolver(kms, max_entries=1000, max_waiters=512, clock=clock, uniform=uniform)


async def test_a_key_in_use_is_refreshed_ahead_of_expiry_and_never_expires_under_its_callers() -> (
    None
):
    kms = MemoryKms()
    kms.create_key(alias="alias/app")
    clock = Clock()
    r = refreshing_resolver(kms, clock, lambda a, b: 0.8)  # refresh after 24 of 30 s
    await r.resolve(parse_key_id("alias/app"), ctx())
    clock.now += 20
    await r.resolve(parse_key_id("alias/app"), ctx())
    await r.settle()
    assert kms.operations() == ["DescribeKey"]  # not due yet
    clock.now += 5  # 25 s: due; the caller is answered from the cache, KMS asked behind it
    kms.faults.append(Fault("DescribeKey", delay=0.05, times=1))
    await r.resolve(parse_key_id("alias/app"), ctx())
    assert kms.operations() == ["DescribeKey"]  # not awaited by the caller
    await r.settle()
    assert kms.operations() == ["DescribeKey"] * 2
    clock.now += 10  # 35 s: past the first entry's expiry, within the refreshed one's
    await r.resolve(parse_key_id("alias/app"), ctx())
    await r.settle()
    assert kms.operations() == ["DescribeKey"] * 2


async def test_keys_resolved_together_are_refreshed_at_scattered_moments() -> None:
    kms = MemoryKms()
    keys = [f"alias/k{i}" for i in range(256)]
    for key in keys:
        kms.create_key(alias=key)
    clock = Clock()
    r = refreshing_resolver(kms, clock, random.Random(7).uniform)
    for key in keys:
        await r.resolve(parse_key_id(key), ctx())
    kms.calls.clear()
    refreshed_per_second = []
    for _ in range(30):  # every key read once a second for one TTL
        clock.now += 1
        for key in keys:
            await r.resolve(parse_key_id(key), ctx())
        await r.settle()
        refreshed_per_second.append(len(kms.operations()))
        kms.calls.clear()
    assert sum(refreshed_per_second) == 256  # each key refreshed once, none expired
    assert max(refreshed_per_second) <= 40  # spread over the refresh window, not one burst


async def test_a_failed_refresh_keeps_the_entry_until_it_expires() -> None:
    kms = MemoryKms()
    kms.create_key(alias="alias/app")
    clock = Clock()
    r = refreshing_resolver(kms, clock, lambda a, b: 0.5)
    first = await r.resolve(parse_key_id("alias/app"), ctx())
    clock.now += 16
    kms.faults.append(Fault("DescribeKey", error_code="KMSInternalException", times=1))
    again = await r.resolve(parse_key_id("alias/app"), ctx())
    await r.settle()
    assert again.arn == first.arn
    assert kms.operations() == ["DescribeKey"] * 2
