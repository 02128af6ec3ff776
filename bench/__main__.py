"""The benchmark harness: every scenario, side by side, written to docs/benchmarks.{json,md}.

    .venv/bin/python -m bench [--duration 4] [--repetitions 3] [--only NAME ...]

Servers and load generators run as separate processes on this machine. Each
measurement: warm-up, a fixed window, several repetitions; we report the median
and the spread (min-max) of req/s and p50/p99 latency. Ratios are taken between
runs made side by side in this one invocation, because absolute numbers drift on
shared machines. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.features import FEATURES
from bench.report import JSON_PATH
from bench.report import main as render_markdown

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "clients", "protos", ".")),
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def process(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start a helper that prints one JSON line when ready; stop it afterwards."""
    proc = subprocess.Popen([PY, "-m", *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError(f"{args} did not start")
    try:
        yield proc, json.loads(line)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def load(target: str, concurrency: int, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    cmd = [
        PY,
        "-m",
        "bench.load",
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        *extra,
    ]
    if target:
        cmd += ["--target", target]
    out = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def repeated(args: argparse.Namespace, fn: Any) -> dict[str, Any]:
    runs = [fn() for _ in range(args.repetitions)]

    def summary(key: str) -> dict[str, float] | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            return None
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    keys = (
        "rps",
        "p50_ms",
        "p99_ms",
        "client_cpu_ms_per_req",
        "server_cpu_ms_per_req",
        "kms_cpu_ms_per_req",
    )
    return {
        "concurrency": runs[0]["concurrency"],
        "errors": sum(r["errors"] for r in runs),
        "error_kinds": dict(sum((Counter(r.get("error_kinds", {})) for r in runs), Counter())),
        **{k: summary(k) for k in keys},
    }


def scenario_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """1. PolicyService (every feature on, in-process zero-latency KMS) vs a bare echo server."""
    results: dict[str, Any] = {}
    for name, module in (
        ("echo", ["bench.echo_server"]),
        ("service", ["bench.policy_server", "--kms", "memory"]),
    ):
        with process(*module) as (proc, ready):
            target = f"127.0.0.1:{ready['port']}"
            results[name] = [
                repeated(
                    args, lambda c=c, t=target: load(t, c, args, "--server-pid", str(proc.pid))
                )
                for c in args.concurrency
            ]
    return results


def scenario_full_path(args: argparse.Namespace) -> dict[str, Any]:
    """2. Service -> aiobotocore -> fast fake KMS, vs an aiobotocore client calling it directly,
    and vs the bare proxy (a grpc.aio server making that client's call, nothing else).

    Every row counts the CPU of every process: the load generator, the service and the
    fake KMS. Many keys: striped, no two calls in flight read the same key. Hot key:
    every call reads one key, the service at its default flags (single-flight), then
    with the optional read cache.
    """
    results: dict[str, Any] = {}
    with process("bench.fake_kms") as (kms_proc, kms):
        url = f"http://127.0.0.1:{kms['port']}"
        kms_pid = ("--kms-pid", str(kms_proc.pid))
        results["direct"] = [
            repeated(args, lambda c=c: load("", c, args, "--direct-kms", url, *kms_pid))
            for c in args.concurrency
        ]

        def each_concurrency(target: str, pid: int) -> list[dict[str, Any]]:
            return [
                repeated(
                    args,
                    lambda c=c: load(target, c, args, "--server-pid", str(pid), *kms_pid),
                )
                for c in args.concurrency
            ]

        with process("bench.echo_server", "--kms", url) as (proc, ready):
            results["proxy"] = each_concurrency(f"127.0.0.1:{ready['port']}", proc.pid)
        with process("bench.policy_server", "--kms", url) as (proc, ready):
            target = f"127.0.0.1:{ready['port']}"
            results["service"] = each_concurrency(target, proc.pid)
            results["service_hot"] = repeated(
                args,
                lambda t=target: load(
                    t, 64, args, "--hot", "--server-pid", str(proc.pid), *kms_pid
                ),
            )
        results["direct_hot"] = repeated(
            args, lambda: load("", 64, args, "--direct-kms", url, "--hot", *kms_pid)
        )
        with process("bench.policy_server", "--kms", url, "--read-cache-ttl", "1") as (proc, ready):
            target = f"127.0.0.1:{ready['port']}"
            results["service_hot_cached"] = repeated(
                args,
                lambda: load(target, 64, args, "--hot", "--server-pid", str(proc.pid), *kms_pid),
            )
    return results


def scenario_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    """3. Many keys, default flags: 256 callers in flight against a fake KMS with 50 ms
    latency vs 64 against 0 ms."""
    results: dict[str, Any] = {}
    for name, latency, concurrency in (("kms_0ms_64", "0", 64), ("kms_50ms_256", "0.05", 256)):
        with process("bench.fake_kms", "--latency", latency) as (kms_proc, kms):
            url = f"http://127.0.0.1:{kms['port']}"
            with process("bench.policy_server", "--kms", url) as (proc, ready):
                target = f"127.0.0.1:{ready['port']}"
                results[name] = repeated(
                    args,
                    lambda t=target, c=concurrency, p=proc, k=kms_proc: load(
                        t, c, args, "--server-pid", str(p.pid), "--kms-pid", str(k.pid)
                    ),
                )
    return results


def scenario_features(args: argparse.Namespace) -> dict[str, Any]:
    """7. What each feature costs: the full path (many keys, 64 in flight, fast fake KMS)
    with each feature switched off in turn (bench.features), and with all of them off;
    beside the direct client, the bare echo server and the bare proxy (a grpc.aio server
    making the direct client's call), in one run.

    Each switched-off run is paired with a run of the service with every feature on made
    just before it, and the saving is the median of the paired differences: a feature
    costs a few hundredths of a millisecond, less than this machine drifts in a minute.
    """
    variants: list[tuple[str, ...]] = [*((name,) for name in FEATURES), FEATURES]
    runs: dict[tuple[str, ...], list[dict[str, Any]]] = {v: [] for v in variants}
    saved: dict[tuple[str, ...], list[float]] = {v: [] for v in variants}
    every: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    echo: list[dict[str, Any]] = []
    proxy: list[dict[str, Any]] = []
    one = argparse.Namespace(**{**vars(args), "repetitions": 1})
    with process("bench.fake_kms") as (kms_proc, kms):
        url = f"http://127.0.0.1:{kms['port']}"
        kms_pid = ("--kms-pid", str(kms_proc.pid))

        def service(*without: str) -> dict[str, Any]:
            server = ("bench.policy_server", "--kms", url, "--without", ",".join(without))
            with process(*server) as (proc, ready):
                target = f"127.0.0.1:{ready['port']}"
                return load(target, 64, one, "--server-pid", str(proc.pid), *kms_pid)

        for _ in range(args.repetitions):
            direct.append(load("", 64, one, "--direct-kms", url, *kms_pid))
            with process("bench.echo_server") as (proc, ready):
                echo.append(
                    load(f"127.0.0.1:{ready['port']}", 64, one, "--server-pid", str(proc.pid))
                )
            with process("bench.echo_server", "--kms", url) as (proc, ready):
                target = f"127.0.0.1:{ready['port']}"
                proxy.append(load(target, 64, one, "--server-pid", str(proc.pid), *kms_pid))
            for variant in variants:
                on, off = service(), service(*variant)
                every.append(on)
                runs[variant].append(off)
                saved[variant].append(on["server_cpu_ms_per_req"] - off["server_cpu_ms_per_req"])

    def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return repeated(argparse.Namespace(repetitions=len(rows)), iter(rows).__next__)

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    return {
        "direct": summary(direct),
        "echo": summary(echo),
        "proxy": summary(proxy),
        "every": summary(every),
        "variants": [
            {"without": list(v), "saved_cpu_ms_per_req": spread(saved[v]), **summary(runs[v])}
            for v in variants
        ],
    }


def scenario_limiter(args: argparse.Namespace) -> dict[str, Any]:
    """4. Let-through rate under 10x overload and refusal latency (bench.limiter)."""
    out = subprocess.run(
        [PY, "-m", "bench.limiter", "--seconds", str(args.duration)],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else 0.0


async def _wait_serving(
    port_holder: dict[str, int], proc: subprocess.Popen[str], deadline: float
) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    start = time.monotonic()
    while time.monotonic() < deadline:
        port = port_holder.get("port")
        if port:
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                    reply = await health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.5
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start
            except grpc.aio.AioRpcError:
                pass
        await asyncio.sleep(0.005)
    raise RuntimeError("not SERVING in time")


def _footprint(args: argparse.Namespace, url: str, env: dict[str, str]) -> dict[str, Any]:
    from tests.support.redis_server import free_port  # a loopback port below 32768

    results: dict[str, list[float]] = {"startup_s": [], "rss_idle_mb": [], "rss_256_mb": []}
    for _ in range(args.repetitions):
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                str(Path(PY).parent / "kms-policy-service"),
                "--listen",
                f"127.0.0.1:{port}",
                "--kms-endpoint-url",
                url,
                "--sts-endpoint-url",
                url,
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            asyncio.run(_wait_serving({"port": port}, proc, time.monotonic() + 20))
            results["startup_s"].append(time.monotonic() - started)
            time.sleep(1.0)
            results["rss_idle_mb"].append(rss_mb(proc.pid))
            loader = subprocess.Popen(
                [
                    PY,
                    "-m",
                    "bench.load",
                    "--target",
                    f"127.0.0.1:{port}",
                    "--concurrency",
                    "256",
                    "--warmup",
                    "1",
                    "--duration",
                    str(args.duration),
                ],
                env=ENV,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            peak = 0.0
            while loader.poll() is None:
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.05)
            results["rss_256_mb"].append(peak)
        finally:
            proc.terminate()
            proc.wait(10)
    return {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for k, v in results.items()
    }


def scenario_footprint(args: argparse.Namespace) -> dict[str, Any]:
    """5. Start-up to SERVING, RSS idle and at 256 in flight, for the sidecar configuration
    (default flags, access records off): as the image runs it, with the pruned SDK data
    on AWS_DATA_PATH (written as the image's build writes it), and without."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kms-bench-sdk-") as sdk:
        subprocess.run(
            [PY, "-m", "kms_policy_service.sdk_data", sdk], env=ENV, cwd=ROOT, check=True
        )
        with process("bench.fake_kms", "--latency", "0.05") as (_, kms):
            url = f"http://127.0.0.1:{kms['port']}"
            results = _footprint(args, url, {**ENV, "AWS_DATA_PATH": sdk})
            results["without_sdk_data"] = _footprint(args, url, ENV)
            # The floors: a bare grpc.aio server, and the bare proxy (it and one
            # aiobotocore client, nothing else), idle after a few calls.
            brief = argparse.Namespace(warmup=0.2, duration=0.5)
            for name, extra in (("echo", ()), ("proxy", ("--kms", url))):
                with process("bench.echo_server", *extra) as (proc, ready):
                    load(f"127.0.0.1:{ready['port']}", 1, brief)
                    time.sleep(1.0)
                    results[f"{name}_rss_idle_mb"] = rss_mb(proc.pid)
    return results


def scenario_resolution(args: argparse.Namespace) -> dict[str, Any]:
    """6. DescribeKey over time: 256 keys read steadily for --resolution-seconds at the
    default key-resolution TTL (30 s); the fake KMS counts its requests per second."""
    import urllib.request

    with process("bench.fake_kms") as (_, kms):
        url = f"http://127.0.0.1:{kms['port']}"
        with process("bench.policy_server", "--kms", url) as (_, ready):
            target = f"127.0.0.1:{ready['port']}"
            began = time.monotonic()
            run = load(target, 4, args, "--duration", str(args.resolution_seconds), "--keys", "256")
            with urllib.request.urlopen(f"{url}/counts", timeout=5) as answer:
                counts = json.loads(answer.read())
    # Seconds since the fake started; the load began about when the service was ready.
    describe = {int(k): v for k, v in counts.get("DescribeKey", {}).items()}
    gets = {int(k): v for k, v in counts.get("GetKeyPolicy", {}).items()}
    first = min(gets) if gets else 0
    last = max(gets) if gets else 0
    return {
        "seconds": args.resolution_seconds,
        "keys": 256,
        "ttl_s": 30.0,
        "elapsed_s": time.monotonic() - began,
        "rps": run["rps"],
        "errors": run["errors"],
        # per second, from the first GetKeyPolicy to the last (0 where none came)
        "describe_per_second": [describe.get(t, 0) for t in range(first, last + 1)],
    }


SCENARIOS = {
    "overhead": scenario_overhead,
    "full_path": scenario_full_path,
    "concurrency": scenario_concurrency,
    "limiter": scenario_limiter,
    "footprint": scenario_footprint,
    "resolution": scenario_resolution,
    "features": scenario_features,
}


def machine() -> dict[str, Any]:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    import grpc

    return {
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "kernel": platform.release(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--resolution-seconds", type=float, default=120.0)
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.json"))
    args = parser.parse_args()
    report = {
        "machine": machine(),
        "command": shlex.join([".venv/bin/python", "-m", "bench", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
    }
    # As pip does when it installs the service (and the image's build does): start-up is
    # not spent compiling modules whose bytecode cache is stale in a working tree.
    compiled = ("service", "clients", "protos")
    subprocess.run([PY, "-m", "compileall", "-q", *compiled], cwd=ROOT, check=True)
    for name in args.only:
        print(f"running {name}...", file=sys.stderr, flush=True)
        report[name] = SCENARIOS[name](args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    if Path(args.out).resolve() == JSON_PATH.resolve() and set(args.only) == set(SCENARIOS):
        render_markdown()  # docs/benchmarks.md follows the JSON of a complete run
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
