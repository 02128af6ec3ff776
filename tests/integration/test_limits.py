"""Limits, deadlines, single-flight and load shedding through the real server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from kms_policy_service.ratelimit import Rate
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return dict(getattr(request, "param", {}))


def get(key: dict[str, Any]) -> pb.GetKeyPolicyRequest:
    return pb.GetKeyPolicyRequest(key_id=key["Arn"])


async def abandoned(faults: KmsFaultInjector) -> None:
    """Wait (bounded) until the injector saw the service drop the held KMS request."""
    await until(
        lambda: any(s.injected == "sleep" and s.abandoned for s in faults.seen),
        timeout=5,
        what="the KMS request abandoned",
    )


@pytest.mark.parametrize("settings_overrides", [{"deadline_margin": 0.5}], indirect=True)
async def test_a_slow_kms_ends_in_deadline_exceeded_promptly_and_the_request_is_abandoned(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.GetKeyPolicy(get(key))
    faults.add(Rule("GetKeyPolicy", "sleep", delay=10.0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(get(key), timeout=1.5)
    # The service's own answer, sent a margin before the caller's deadline: a client that
    # timed out by itself would see a bare DEADLINE_EXCEEDED without details.
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details.error_info.metadata["kmsOperation"] == "GetKeyPolicy"
    await abandoned(faults)


async def test_throttling_is_retried_then_answered_with_retry_info(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(Rule("GetKeyPolicy", "error", "ThrottlingException"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(get(key))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "KMS_THROTTLED")
    assert details.retry_info is not None and details.retry_info.retry_delay.seconds >= 1
    assert faults.operations().count("GetKeyPolicy") == 3


async def test_a_hundred_concurrent_gets_of_one_key_cost_one_kms_call(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.GetKeyPolicy(get(key))  # resolve the key first
    faults.clear()
    faults.add(Rule("GetKeyPolicy", "sleep", delay=0.3))
    replies = await asyncio.gather(*(service.stub.GetKeyPolicy(get(key)) for _ in range(100)))
    assert {r.etag for r in replies} == {replies[0].etag}
    assert faults.operations().count("GetKeyPolicy") == 1


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "kms_rate_limits": {"PutKeyPolicy": Rate(1, 1)},
            "key_write_rate_limit": None,
            "max_queue_wait": 0.0,
        }
    ],
    indirect=True,
)
async def test_past_the_operation_rate_a_put_is_refused_at_once_with_quota_details(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for()))
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for())
        )
    assert time.monotonic() - started < 0.5
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == "operation:PutKeyPolicy"
    assert details.retry_info is not None
    assert 0.5 < details.retry_info.retry_delay.ToNanoseconds() / 1e9 <= 1.0
    assert faults.operations().count("PutKeyPolicy") == 1


@pytest.mark.parametrize("settings_overrides", [{"max_queue_wait": 2.0}], indirect=True)
async def test_a_second_put_to_a_hot_key_waits_for_its_token_within_the_deadline(
    service: RunningService, key: dict[str, Any]
) -> None:
    await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # 1 Put/key/s: 0.3 s is not enough
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for()), timeout=0.3
        )
    details = details_of(caught.value)
    assert details.quota_failure is not None
    assert details.quota_failure.violations[0].subject == f"key:{key['Arn']}"
    started = time.monotonic()
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for()), timeout=3
    )
    assert time.monotonic() - started > 0.3  # it waited for the key's token


@pytest.mark.parametrize(
    "settings_overrides",
    [{"kms_rate_limits": {"GetKeyPolicy": Rate(2, 2)}, "max_queue_wait": 0.0}],
    indirect=True,
)
async def test_every_retry_takes_a_token(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(Rule("GetKeyPolicy", "error", "ThrottlingException"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(get(key))
    # two tokens: two attempts, then the third attempt is refused by our own bucket
    assert details_of(caught.value).reason == "RATE_LIMITED"
    assert faults.operations().count("GetKeyPolicy") == 2


@pytest.mark.parametrize(
    "settings_overrides", [{"max_concurrency": 1, "max_waiters": 0}], indirect=True
)
async def test_past_the_concurrency_bound_calls_are_shed_at_once(
    service: RunningService, faults: KmsFaultInjector, kms: Any
) -> None:
    keys = [kms.create_key(Policy=policy_for())["KeyMetadata"] for _ in range(2)]
    for k in keys:
        await service.stub.GetKeyPolicy(get(k))
    faults.clear()  # so the wait below sees the slow call, not the warm-up ones
    faults.add(Rule("GetKeyPolicy", "sleep", delay=0.5))
    slow = asyncio.ensure_future(service.stub.GetKeyPolicy(get(keys[0])))
    await until(lambda: "GetKeyPolicy" in faults.operations(), what="the slow call at KMS")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(get(keys[1]))
    assert details_of(caught.value).reason == "OVERLOADED"
    await slow


@pytest.mark.parametrize("settings_overrides", [{"read_cache_ttl": 30.0}], indirect=True)
async def test_the_read_cache_serves_repeated_gets_and_a_put_invalidates_it(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    first = await service.stub.GetKeyPolicy(get(key))
    await service.stub.GetKeyPolicy(get(key))
    assert faults.operations().count("GetKeyPolicy") == 1
    new = policy_for(
        extra=[
            {
                "Sid": "X",
                "Effect": "Allow",
                "Principal": {"AWS": "123456789012"},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    put = await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=new))
    after = await service.stub.GetKeyPolicy(get(key))
    assert after.etag == put.etag != first.etag


async def test_a_cancelled_call_abandons_its_kms_request(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.GetKeyPolicy(get(key))
    faults.add(Rule("GetKeyPolicy", "sleep", delay=5.0))
    call = service.stub.GetKeyPolicy(get(key), timeout=10)
    await until(
        lambda: any(s.operation == "GetKeyPolicy" and s.injected for s in faults.seen),
        what="the call held at KMS",
    )
    call.cancel()
    await abandoned(faults)


@pytest.mark.parametrize("settings_overrides", [{"max_concurrent_rpcs": 4}], indirect=True)
async def test_past_the_rpc_bound_grpc_itself_refuses_so_memory_stays_bounded(
    service: RunningService, faults: KmsFaultInjector, kms: Any
) -> None:
    keys = [kms.create_key(Policy=policy_for())["KeyMetadata"] for _ in range(10)]
    faults.add(Rule("DescribeKey", "sleep", delay=0.5))
    results = await asyncio.gather(
        *(service.stub.GetKeyPolicy(get(k), timeout=5) for k in keys), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 6
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert len(faults.operations()) == 4 + 4  # only the admitted four reached KMS
