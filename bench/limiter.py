"""Limiter benchmark: let-through accuracy under 10x overload, and the cost of a refusal.

    .venv/bin/python -m bench.limiter [--seconds 5] [--rate 50]

Runs the real RateLimiter in-process against the in-memory store and against a
real redis-server (started here on a loopback port), offers ten times the
configured rate for a fixed window, and reports let-through/configured and the
latency of refusals (p50/p99). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from kms_policy_service.errors import ResourceExhausted
from kms_policy_service.ratelimit import Limits, LocalStore, Rate, RateLimiter, SharedStore
from kms_policy_service.ratelimit.redis_store import RedisStore
from tests.support.redis_server import RedisServer


async def overload(store: SharedStore, rate: float, seconds: float, burst: int) -> dict[str, Any]:
    limiter = RateLimiter(
        Limits(operations={"PutKeyPolicy": Rate(rate, burst)}, key_writes=None, max_queue_wait=0),
        store,
    )
    await drive(limiter, rate, 1.0)  # warm-up: spend the initial burst outside the window
    allowed, refusals, elapsed = await drive(limiter, rate, seconds)
    q = statistics.quantiles(refusals, n=100)
    return {
        "configured_per_s": rate,
        "burst": burst,
        "offered_per_s": 10 * rate,
        "let_through_per_s": round(allowed / elapsed, 2),
        "accuracy": round(allowed / elapsed / rate, 3),
        "refusal_p50_ms": round(q[49] * 1000, 4),
        "refusal_p99_ms": round(q[98] * 1000, 4),
    }


async def drive(
    limiter: RateLimiter, rate: float, seconds: float
) -> tuple[int, list[float], float]:
    offered = 10 * rate
    allowed = 0
    refusals: list[float] = []
    start = time.monotonic()
    for i in range(int(offered * seconds)):
        delay = start + i / offered - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            await limiter.acquire(
                "PutKeyPolicy", caller="bench", key=None, deadline=time.monotonic() + 10
            )
            allowed += 1
        except ResourceExhausted:
            refusals.append(time.perf_counter() - t0)
    return allowed, refusals, time.monotonic() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=5)
    args = parser.parse_args()
    results = {"memory": await overload(LocalStore(), args.rate, args.seconds, args.burst)}
    redis = RedisServer().start()
    try:
        store = RedisStore(redis.url, fallback_fraction=0.5)
        results["redis"] = await overload(store, args.rate, args.seconds, args.burst)
        await store.close()
    finally:
        redis.kill()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
