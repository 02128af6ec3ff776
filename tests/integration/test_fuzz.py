"""Fuzz through the real server: 10,000+ requests of random and mutated protobuf bytes,
policies full of escapes, and huge or odd metadata. Zero INTERNAL or UNKNOWN answers, no
tracebacks, the undecodable ones logged at a bounded rate, and the process's RSS flat."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess, loopback_service

UNEXPECTED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
REQUESTS = 10_500
IN_FLIGHT = 48
METHODS = {
    "GetKeyPolicy": pb.GetKeyPolicyRequest,
    "PutKeyPolicy": pb.PutKeyPolicyRequest,
    "ListKeyPolicies": pb.ListKeyPoliciesRequest,
    "ValidateKeyPolicy": pb.ValidateKeyPolicyRequest,
}
ESCAPES = ["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000", "\\u00ff", "\\\\", '\\"', "\\uFFFF"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def escaped_policy(rng: random.Random) -> str:
    """A policy whose strings carry JSON escapes (lone surrogates, NUL, pairs...)."""
    doc = json.loads(policy_for())
    junk = "".join(rng.choice(ESCAPES) for _ in range(rng.randrange(1, 6)))
    where = rng.randrange(4)
    text = json.dumps(doc)
    marker = "Enable IAM User Permissions"
    if where == 0:
        return text.replace(marker, marker + junk)
    if where == 1:
        return text.replace('"kms:*"', f'"kms:{junk}*"')
    if where == 2:
        return text.replace('"Resource"', f'"Res{junk}ource"')
    return text.replace(f"{ACCOUNT}:root", f"{ACCOUNT}:ro{junk}ot")


def valid_bytes(rng: random.Random, method: str) -> bytes:
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{rng.choice(['', 'x', '1234'])}"
    message: Any
    if method == "GetKeyPolicy":
        message = pb.GetKeyPolicyRequest(key_id=key)
    elif method == "ListKeyPolicies":
        message = pb.ListKeyPoliciesRequest(key_id=key, page_size=rng.randrange(-5, 2000))
    elif method == "PutKeyPolicy":
        message = pb.PutKeyPolicyRequest(
            key_id=key, policy=escaped_policy(rng), etag="f" * rng.randrange(70)
        )
    else:
        message = pb.ValidateKeyPolicyRequest(policy=escaped_policy(rng))
    data: bytes = message.SerializeToString()
    return data


def mutated(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(4)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            del buf[rng.randrange(len(buf)) :]
        elif op == 2:
            buf.insert(rng.randrange(len(buf) + 1), rng.randrange(256))
        else:
            buf[rng.randrange(len(buf) + 1) :] = rng.randbytes(rng.randrange(1, 16))
    return bytes(buf)


def odd_metadata(rng: random.Random) -> tuple[tuple[str, str | bytes], ...]:
    choice = rng.randrange(6)
    if choice == 0:
        return (("x-request-id", "r" * rng.randrange(100, 4000)),)
    if choice == 1:
        return (("x-request-id", "".join(chr(rng.randrange(32, 127)) for _ in range(64))),)
    if choice == 2:
        return (("x-forwarded-client-cert", 'By=x;URI="' + "\\" * rng.randrange(1, 500)),)
    if choice == 3:
        return (("x-anything-bin", rng.randbytes(rng.randrange(1, 2000))),)
    if choice == 4:
        return tuple((f"x-h{i}", "v" * 50) for i in range(rng.randrange(1, 40)))
    return ()


def request_for(rng: random.Random) -> tuple[str, bytes, tuple[tuple[str, str | bytes], ...]]:
    method = rng.choice(list(METHODS))
    kind = rng.randrange(3)
    if kind == 0:
        data = rng.randbytes(rng.randrange(0, 300))
    elif kind == 1:
        data = mutated(rng, valid_bytes(rng, method))
    else:
        data = valid_bytes(rng, method)
    return method, data, odd_metadata(rng)


@pytest.mark.slow
async def test_ten_thousand_hostile_requests_get_deliberate_answers_and_rss_stays_flat(
    _injector: KmsFaultInjector,
) -> None:
    proc = ServiceProcess(
        [*loopback_service(on=_injector.url), "--caller-refusal-rate-limit", "off"]
    ).start()
    assert proc.proc is not None
    rng = random.Random(20261201)
    codes: Counter[str] = Counter()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            calls: dict[str, Callable[..., Any]] = {
                m: channel.unary_unary(
                    f"/kmspolicy.v1.PolicyService/{m}",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                for m in METHODS
            }

            async def one() -> None:
                method, data, metadata = request_for(rng)
                try:
                    await calls[method](data, metadata=metadata, timeout=10)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1
                    assert exc.code() not in UNEXPECTED, (method, data, exc.details())

            async def batch(n: int) -> None:
                for start in range(0, n, IN_FLIGHT):
                    await asyncio.gather(*(one() for _ in range(min(IN_FLIGHT, n - start))))

            await batch(2_000)  # warm-up: caches, pools and allocator arenas settle
            before = rss_kib(proc.proc.pid)
            await batch(REQUESTS - 2_000)
            after = rss_kib(proc.proc.pid)
        logs = proc.drain_logs()
    finally:
        proc.stop()
    assert sum(codes.values()) == REQUESTS
    assert codes["INVALID_ARGUMENT"] > REQUESTS // 3  # the fuzz reached the decoders
    tracebacks = [r for r in logs if "exception" in r or r.get("level") in ("ERROR", "CRITICAL")]
    assert tracebacks == []
    undecodable = [r for r in logs if "undecodable" in str(r.get("message", ""))]
    assert 1 <= len(undecodable) <= 10  # one per 10 s at most
    assert after - before < 5 * 1024, (before, after)
