"""The load generator: N workers in flight for a fixed window, after a warm-up.

    python -m bench.load --target HOST:PORT --concurrency 64 [--direct-kms URL] [--hot]

`--direct-kms URL` calls KMS GetKeyPolicy through one reused aiobotocore client
instead (what a caller with IAM access would do). Prints one JSON object:
requests, errors, req/s, p50/p99 latency (ms), and CPU per request of this
process, of the server (--server-pid) and of the fake KMS behind it (--kms-pid)
over the measurement window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from bench.fake_kms import key_arn
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def key_ids(args: argparse.Namespace) -> list[str]:
    """Hot: one key. Else striped: worker i reads keys i, i+N, i+2N... of a multiple of N
    keys (N in flight), so no two calls in flight ever read the same key."""
    if args.hot:
        return ["alias/bench-0"]
    count = -(-max(args.keys, args.concurrency) // args.concurrency) * args.concurrency
    return [f"alias/bench-{i}" for i in range(count)]


async def run(args: argparse.Namespace, call: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
    keys = key_ids(args)
    latencies: list[float] = []
    errors = 0
    error_kinds: Counter[str] = Counter()  # what the errors were (a gRPC code, an exception)
    measuring = False
    stop = False

    async def worker(i: int) -> None:
        nonlocal errors
        n = i
        while not stop:
            key = keys[n % len(keys)]
            n += args.concurrency
            t0 = time.perf_counter()
            try:
                await call(key)
            except Exception as exc:
                if measuring:
                    errors += 1
                    code = getattr(exc, "code", None)
                    error_kinds[code().name if callable(code) else type(exc).__name__] += 1
                continue
            if measuring:
                latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.ensure_future(worker(i)) for i in range(args.concurrency)]
    await asyncio.sleep(args.warmup)
    pids = {"client": os.getpid(), "server": args.server_pid, "kms": args.kms_pid}
    pids = {name: pid for name, pid in pids.items() if pid}
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    measuring, start = True, time.perf_counter()
    await asyncio.sleep(args.duration)
    measuring = False
    elapsed = time.perf_counter() - start
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    count = len(latencies)
    q = statistics.quantiles(latencies, n=100) if count > 1 else [0.0] * 99
    return {
        "concurrency": args.concurrency,
        "requests": count,
        "errors": errors,
        "error_kinds": dict(error_kinds),
        "rps": count / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        **{
            f"{name}_cpu_ms_per_req": (cpu1[name] - cpu0[name]) * 1000 / max(count, 1)
            if name in pids
            else None
            for name in ("client", "server", "kms")
        },
    }


async def grpc_load(args: argparse.Namespace) -> dict[str, Any]:
    # At most 64 calls in flight per channel, as a well-behaved client spreads its calls
    # (the service grants --max-streams-per-connection, 512 by default, on each).
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(-(-args.concurrency // 64))]
    stubs = [pb_grpc.PolicyServiceStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    turn = 0

    async def call(key: str) -> Any:
        nonlocal turn
        turn += 1
        stub = stubs[turn % len(stubs)]
        return await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key), timeout=30)

    try:
        return await run(args, call)
    finally:
        for ch in channels:
            await ch.close()


@asynccontextmanager
async def direct_client(url: str, pool: int) -> AsyncIterator[Any]:
    """One aiobotocore KMS client, as a caller with IAM access would make it."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=pool,
        connect_timeout=2,
        read_timeout=30,
    )
    async with get_session().create_client(
        "kms",
        region_name="us-east-1",
        endpoint_url=url,
        config=config,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ) as kms:
        yield kms


async def direct_load(args: argparse.Namespace) -> dict[str, Any]:
    async with direct_client(args.direct_kms, args.concurrency) as kms:

        async def call(key: str) -> Any:
            return await kms.get_key_policy(KeyId=key_arn(key), PolicyName="default")

        return await run(args, call)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="")
    parser.add_argument("--direct-kms", default="")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--hot", action="store_true", help="every call reads the same key")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--kms-pid", type=int, default=0, help="the fake KMS, behind the server")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(direct_load(args) if args.direct_kms else grpc_load(args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
