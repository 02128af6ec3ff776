"""Abuse measurements for docs/operations.md ("Limits and abuse"): not part of the suite.

    .venv/bin/python -m bench.abuse

1. Stalled streams: the key admin's Get latency over mTLS, alone and while another
   identity holds 1,100 streams that never send their request (11 connections).
2. Caller-supplied patterns: RSS of the server process over 10,000 ValidateKeyPolicy
   calls, each with one unique 32 KB `kms:<random letters>` action.

The server runs in this process (MemoryKms backend), so RSS figures include the client.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import string
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from kms_policy_service.memory_kms import MemoryKms
from kms_policy_service.server import Server
from kms_policy_service.settings import Settings
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.support.certs import CertAuthority, Pair

ADMIN = "spiffe://cluster.local/ns/security/sa/key-admin"
ATTACKER = "spiffe://cluster.local/ns/other/sa/attacker"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def channel(port: int, ca: CertAuthority, pair: Pair) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(ca.pem, pair.key, pair.cert)
    return grpc.aio.secure_channel(
        f"localhost:{port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
    )


async def _never() -> AsyncIterator[bytes]:
    await asyncio.sleep(3600)
    yield b""


async def latencies(stub: pb_grpc.PolicyServiceStub, key: str, n: int = 300) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key), timeout=10)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def stalled_streams() -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kms-abuse-"))
    ca = CertAuthority()
    (work / "ca.crt").write_bytes(ca.pem)
    cert, key = ca.issue("kms", dns=("localhost",), server=True).write(work, "server")
    (work / "authz.yaml").write_text(
        f"rules:\n  - callers: ['{ADMIN}']\n    actions: ['*']\n    keys: ['*']\n"
    )
    kms = MemoryKms()
    arn = kms.create_key()
    server = Server(
        Settings(
            listen="127.0.0.1:0",
            tls_cert=str(cert),
            tls_key=str(key),
            tls_client_ca=str(work / "ca.crt"),
            authz_policy=str(work / "authz.yaml"),
        ),
        backend=kms,
    )
    await server.startup()
    admin = channel(server.port, ca, ca.issue("admin", uris=(ADMIN,)))
    stub = pb_grpc.PolicyServiceStub(admin)
    await latencies(stub, arn, 50)  # warm-up
    alone = await latencies(stub, arn)
    attacker_pair = ca.issue("attacker", uris=(ATTACKER,))
    attackers = [channel(server.port, ca, attacker_pair) for _ in range(11)]
    calls = []
    for ch in attackers:
        open_stream = ch.stream_unary(
            "/kmspolicy.v1.PolicyService/GetKeyPolicy",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        calls += [open_stream(_never()) for _ in range(100)]
    assert server.admission is not None
    deadline = time.monotonic() + 30
    share = server.settings.max_rpcs_per_caller
    while sum(c.done() for c in calls) < len(calls) - share and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    held = server.admission.held(ATTACKER)
    attacked = await latencies(stub, arn)
    for c in calls:
        c.cancel()
    for ch in [*attackers, admin]:
        await ch.close()
    await server.shutdown()
    return {
        "admin_p50_ms_alone": round(statistics.median(alone), 3),
        "admin_p50_ms_under_attack": round(statistics.median(attacked), 3),
        "admin_p99_ms_under_attack": round(sorted(attacked)[int(len(attacked) * 0.99)], 3),
        "attacker_streams": len(calls),
        "attacker_streams_held": held,
    }


async def unique_patterns(n: int = 10_000) -> dict[str, Any]:
    kms = MemoryKms()
    server = Server(Settings(listen="127.0.0.1:0", caller_refusal_rate_limit=None), backend=kms)
    await server.startup()
    rng = random.Random(1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.PolicyServiceStub(ch)

        def policy() -> str:
            action = "kms:" + "".join(rng.choices(string.ascii_letters, k=32_000))
            statement = {"Effect": "Allow", "Principal": "*", "Action": action, "Resource": "*"}
            return json.dumps({"Version": "2012-10-17", "Statement": [statement]})

        for _ in range(500):
            await stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy()))
        before = rss_mib()
        started = time.perf_counter()
        for _ in range(n):
            await stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy()))
        elapsed = time.perf_counter() - started
        after = rss_mib()
    await server.shutdown()
    return {
        "requests": n,
        "rss_mib_before": round(before, 1),
        "rss_mib_after": round(after, 1),
        "rss_mib_delta": round(after - before, 1),
        "ms_per_validate": round(elapsed / n * 1000, 3),
    }


async def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    print(json.dumps({"stalled_streams": await stalled_streams()}), flush=True)
    print(json.dumps({"unique_patterns": await unique_patterns()}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
