"""The gateway: retries only what is retryable, within the deadline, one token per attempt."""

from __future__ import annotations

import time

import pytest

from kms_policy_service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.memory_kms import Fault, MemoryKms
from kms_policy_service.request import RequestContext


class CountingLimiter:
    """Counts the tokens taken, and for which operation and key."""

    def __init__(self) -> None:
        self.tokens = 0
        self.taken: list[tuple[str, str | None]] = []

    async def acquire(
        self,
        operation: str,
        *,
        caller: str,
        key: str | None,
        deadline: float,
        account: str | None = None,
    ) -> None:
        self.tokens += 1
        self.taken.append((operation, key))


def ctx(seconds: float = 5.0) -> RequestContext:
    return RequestContext("r", "Get", "local", "peer", "local", time.monotonic() + seconds)


def no_jitter(low: float, high: float) -> float:
    return high  # the longest backoff the policy allows: deterministic


def gateway(
    kms: MemoryKms, limiter: CountingLimiter, attempts: int = 3, base: float = 0.001
) -> KmsGateway:
    return KmsGateway(
        kms,
        limiter,
        RetryPolicy(attempts, base, base * 5, 0.01, uniform=no_jitter),
        max_concurrency=4,
        max_waiters=4,
    )


@pytest.fixture
def kms() -> MemoryKms:
    return MemoryKms()


async def test_retryable_failures_are_retried_each_with_a_token(kms: MemoryKms) -> None:
    arn = kms.create_key()
    kms.faults += [
        Fault("GetKeyPolicy", "ThrottlingException", times=1),
        Fault("GetKeyPolicy", "KMSInternalException", http_status=500, times=1),
    ]
    limiter, c = CountingLimiter(), ctx()
    policy = await gateway(kms, limiter).get_key_policy(arn, "default", region="us-east-1", ctx=c)
    assert "Enable IAM User Permissions" in policy
    assert limiter.tokens == 3 and c.kms_attempts == 3
    assert kms.operations() == ["GetKeyPolicy"] * 3


async def test_exhausted_retries_map_through_the_table_naming_the_key(kms: MemoryKms) -> None:
    arn = kms.create_key()
    kms.faults.append(Fault("GetKeyPolicy", "ThrottlingException"))
    with pytest.raises(ResourceExhausted) as caught:
        await gateway(kms, CountingLimiter()).get_key_policy(
            arn, "default", region="us-east-1", ctx=ctx()
        )
    assert caught.value.reason == "KMS_THROTTLED"
    assert caught.value.metadata["keyArn"] == arn
    assert caught.value.metadata["kmsOperation"] == "GetKeyPolicy"
    assert kms.operations() == ["GetKeyPolicy"] * 3


async def test_limit_exceeded_on_put_is_never_retried(kms: MemoryKms) -> None:
    arn = kms.create_key()
    kms.faults.append(Fault("PutKeyPolicy", "LimitExceededException"))
    limiter = CountingLimiter()
    with pytest.raises(InvalidArgument) as caught:
        await gateway(kms, limiter).put_key_policy(
            arn, "default", "{}", bypass_lockout_check=False, region="us-east-1", ctx=ctx()
        )
    assert caught.value.reason == "POLICY_TOO_LARGE" and limiter.tokens == 1


async def test_a_slow_call_ends_at_the_deadline_and_the_request_is_abandoned(
    kms: MemoryKms,
) -> None:
    arn = kms.create_key()
    kms.faults.append(Fault("GetKeyPolicy", delay=30.0))
    c = ctx(0.1)
    with pytest.raises(DeadlineExceeded):
        await gateway(kms, CountingLimiter()).get_key_policy(
            arn, "default", region="us-east-1", ctx=c
        )
    assert [call.abandoned for call in kms.calls] == [True]
    assert c.kms_uncertain == 1  # it was on its way: its effect is unknown


async def test_no_retry_when_the_deadline_cannot_fit_the_backoff(kms: MemoryKms) -> None:
    arn = kms.create_key()
    kms.faults.append(Fault("GetKeyPolicy", "KMSInternalException", http_status=500))
    limiter = CountingLimiter()
    g = gateway(kms, limiter, attempts=5, base=10.0)  # every backoff is 10 s or more
    with pytest.raises(Unavailable):
        await g.get_key_policy(arn, "default", region="us-east-1", ctx=ctx(0.5))
    assert limiter.tokens == 1 and kms.operations() == ["GetKeyPolicy"]


async def test_only_writes_spend_the_per_key_bucket(kms: MemoryKms) -> None:
    arn = kms.create_key()
    limiter = CountingLimiter()
    g = gateway(kms, limiter)
    await g.get_key_policy(arn, "default", region="us-east-1", ctx=ctx())
    await g.put_key_policy(
        arn, "default", "{}", bypass_lockout_check=False, region="us-east-1", ctx=ctx()
    )
    assert limiter.taken == [("GetKeyPolicy", None), ("PutKeyPolicy", arn)]
