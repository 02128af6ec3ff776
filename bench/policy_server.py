"""PolicyService for benchmarks: the real Server with every feature at its defaults.

Validation, the limiter (generous limits), metrics (listener on), JSON access logs
(to a file, as a node's log pipeline would take them) and a small authorization
policy. KMS is either the in-process zero-latency MemoryKms (`--kms memory`) or a
URL reached through aiobotocore over HTTP.

    python -m bench.policy_server --kms memory|http://127.0.0.1:PORT [--read-cache-ttl S]
        [--without FEATURE,...]   (bench.features: switched off to measure what each costs)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.features import FEATURES, switch_off
from kms_policy_service.logs import configure
from kms_policy_service.memory_kms import MemoryKms
from kms_policy_service.ratelimit import Rate
from kms_policy_service.server import Server
from kms_policy_service.settings import Settings

AUTHZ = """rules:
  - callers: ["spiffe://cluster.local/ns/payments/sa/*"]
    actions: ["GetKeyPolicy", "ListKeyPolicies"]
    keys: ["alias/payments-*"]
  - callers: ["local"]
    actions: ["*"]
    keys: ["*"]
"""
GENEROUS = {
    op: Rate(100_000, 100_000)
    for op in ("PutKeyPolicy", "GetKeyPolicy", "ListKeyPolicies", "DescribeKey")
}


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    (workdir / "authz.yaml").write_text(AUTHZ)
    log_file = open(os.devnull if args.no_log else workdir / "access.log", "a")  # noqa: SIM115, ASYNC230
    without = [name for name in args.without.split(",") if name]
    configure("WARNING" if "access-records" in without else args.log_level, "json", stream=log_file)
    switch_off(without)
    settings = Settings(
        listen="127.0.0.1:0",
        kms_endpoint_url=None if args.kms == "memory" else args.kms,
        sts_endpoint_url=None if args.kms == "memory" else args.kms,
        authz_policy=str(workdir / "authz.yaml"),
        metrics_listen="127.0.0.1:0",
        kms_rate_limits=GENEROUS,
        key_write_rate_limit=None,
        read_cache_ttl=args.read_cache_ttl,
        # The service's own defaults unless asked (the benchmark measures them).
        **({"max_concurrency": args.max_concurrency} if args.max_concurrency else {}),
        **({"kms_max_pool_connections": args.max_concurrency} if args.max_concurrency else {}),
    )
    backend = None
    if args.kms == "memory":
        backend = MemoryKms()
        for i in range(512):  # the load generator reads alias/bench-0 .. alias/bench-N
            backend.create_key(alias=f"alias/bench-{i}")
    server = Server(settings, backend=backend)
    await server.startup()
    print(json.dumps({"port": server.port}), flush=True)
    try:
        import asyncio

        await asyncio.Event().wait()
    finally:
        await server.shutdown()


if __name__ == "__main__":
    import uvloop

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    parser = argparse.ArgumentParser()
    parser.add_argument("--kms", default="memory")
    parser.add_argument("--read-cache-ttl", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, default=0, help="0: the default")
    parser.add_argument("--no-log", action="store_true")
    parser.add_argument("--log-level", default="INFO", help="WARNING turns access records off")
    parser.add_argument(
        "--without",
        default="",
        help=f"features switched off to measure their cost, comma-separated: {','.join(FEATURES)}",
    )
    uvloop.run(main(parser.parse_args()))
