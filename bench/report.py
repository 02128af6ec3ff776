"""Render docs/benchmarks.json as the tables in docs/benchmarks.md (between markers).

.venv/bin/python -m bench.report   # also run at the end of `python -m bench`
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
JSON_PATH = ROOT / "docs" / "benchmarks.json"
MD_PATH = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _m(stat: dict[str, float] | None, digits: int = 0) -> str:
    if not stat:
        return "-"
    fmt = f"{{:.{digits}f}}"
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}–{fmt.format(stat['max'])})"


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['concurrency']} | {_m(r['rps'])} | {_m(r['p50_ms'], 2)} | {_m(r['p99_ms'], 2)} "
        f"| {_m(r.get('server_cpu_ms_per_req'), 3)} | {_m(r.get('kms_cpu_ms_per_req'), 3)} "
        f"| {_m(r.get('client_cpu_ms_per_req'), 3)} | {_errors(r)} |"
    )


def _errors(r: dict[str, Any]) -> str:
    """The count, and what they were (gRPC codes) when there were any."""
    kinds = r.get("error_kinds") or {}
    if not kinds:
        return str(r["errors"])
    return f"{r['errors']} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"


HEADER = (
    "| run | in flight | req/s | p50 ms | p99 ms | server CPU ms/req | fake KMS CPU ms/req "
    "| client CPU ms/req | errors |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def _floor(ratio: float) -> str:
    """Three decimals, rounded down, so a ratio just under a target never reads as equal."""
    return f"{math.floor(ratio * 1000) / 1000:.3f}"


def _verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def render(data: dict[str, Any]) -> str:
    out = [
        f"Measured {data['when']} on {data['machine']['cores']} cores ({data['machine']['cpu']}), "
        f"Python {data['machine']['python']}, grpcio {data['machine']['grpcio']}, "
        f"kernel {data['machine']['kernel']}.",
        "",
        f"Command: `{data['command']}`. Medians over {data['settings']['repetitions']} repetitions "
        f"of {data['settings']['duration']} s after {data['settings']['warmup']} s of warm-up; "
        "(min–max) in brackets.",
        "",
    ]
    targets: list[str] = []
    if "overhead" in data:
        o = data["overhead"]
        out += ["### 1. Overhead vs the bare-gRPC limit", "", HEADER]
        out += [_row("bare echo", r) for r in o["echo"]]
        out += [_row("PolicyService (in-process KMS)", r) for r in o["service"]]
        echo64 = next(r for r in o["echo"] if r["concurrency"] == 64)
        svc64 = next(r for r in o["service"] if r["concurrency"] == 64)
        echo1 = next(r for r in o["echo"] if r["concurrency"] == 1)
        svc1 = next(r for r in o["service"] if r["concurrency"] == 1)
        ratio = svc64["rps"]["median"] / echo64["rps"]["median"]
        added = svc1["p50_ms"]["median"] - echo1["p50_ms"]["median"]
        targets += [
            f"| 1 | throughput at 64 in flight vs bare echo | ≥ 0.8× | {_floor(ratio)}× | {_verdict(ratio, 0.8)} |",
            f"| 1 | added p50 at 1 in flight | ≤ 0.3 ms | {added:.2f} ms | {_verdict(added, 0.3, higher_is_better=False)} |",
        ]
        out.append("")
    if "full_path" in data:
        f = data["full_path"]
        out += [
            "### 2. Full path (aiobotocore → fast fake KMS) vs calling KMS directly",
            "",
            HEADER,
        ]
        out += [_row("direct aiobotocore client", r) for r in f["direct"]]
        out += [_row("bare proxy (gRPC + that client's call)", r) for r in f.get("proxy", [])]
        out += [_row("PolicyService → aiobotocore", r) for r in f["service"]]
        out.append(_row("direct, hot key", f["direct_hot"]))
        if "service_hot" in f:
            out.append(
                _row("PolicyService, hot key, default flags (single-flight)", f["service_hot"])
            )
        out.append(
            _row("PolicyService, hot key, single-flight + 1 s read cache", f["service_hot_cached"])
        )
        d64 = next(r for r in f["direct"] if r["concurrency"] == 64)
        s64 = next(r for r in f["service"] if r["concurrency"] == 64)
        d1 = next(r for r in f["direct"] if r["concurrency"] == 1)
        s1 = next(r for r in f["service"] if r["concurrency"] == 1)
        ratio = s64["rps"]["median"] / d64["rps"]["median"]
        added = s1["p50_ms"]["median"] - d1["p50_ms"]["median"]
        hot_cached = f["service_hot_cached"]["rps"]["median"] / f["direct_hot"]["rps"]["median"]
        if "overhead" in data:
            # The two unavoidable parts, measured in this run: one aiobotocore call (the
            # direct client's CPU per call) and one gRPC call (the bare server's).
            echo64 = next(r for r in data["overhead"]["echo"] if r["concurrency"] == 64)
            floor = (
                d64["client_cpu_ms_per_req"]["median"] + echo64["server_cpu_ms_per_req"]["median"]
            )
            cpu = s64["server_cpu_ms_per_req"]["median"] / floor
            targets.append(
                f"| 2 | service CPU per request at 64 in flight vs (direct client's + bare gRPC "
                f"server's), {s64['server_cpu_ms_per_req']['median']:.3f} vs {floor:.3f} ms "
                f"| ≤ 1.1× | {cpu:.3f}× | {_verdict(cpu, 1.1, higher_is_better=False)} |"
            )
        targets += [
            f"| 2 | throughput at 64 vs direct client | ≥ 0.7× | {_floor(ratio)}× | {_verdict(ratio, 0.7)} |",
            f"| 2 | added p50 at 1 in flight | ≤ +0.5 ms | {added:+.2f} ms | {_verdict(added, 0.5, higher_is_better=False)} |",
        ]
        if "proxy" in f:
            p64 = next(r for r in f["proxy"] if r["concurrency"] == 64)
            p1 = next(r for r in f["proxy"] if r["concurrency"] == 1)
            proxy_ratio = p64["rps"]["median"] / d64["rps"]["median"]
            proxy_added = p1["p50_ms"]["median"] - d1["p50_ms"]["median"]
            targets.append(
                f"| 2 | the bare proxy (no feature at all), for comparison: throughput at 64 vs "
                f"direct; added p50 at 1 in flight | - | {proxy_ratio:.2f}×; {proxy_added:+.2f} ms | - |"
            )
        if "service_hot" in f:
            hot = f["service_hot"]["rps"]["median"] / f["direct_hot"]["rps"]["median"]
            targets.append(
                f"| 2 | hot key, default flags (single-flight) vs direct | ≥ 1.5× | {_floor(hot)}× | {_verdict(hot, 1.5)} |"
            )
        targets.append(
            f"| 2 | hot key with the 1 s read cache vs direct (information) | - | {hot_cached:.2f}× | - |"
        )
        out.append("")
    if "concurrency" in data:
        c = data["concurrency"]
        out += [
            "### 3. Concurrency: waiting on KMS costs only latency (many keys, default flags)",
            "",
            HEADER,
        ]
        out += [
            _row("KMS 0 ms, 64 in flight", c["kms_0ms_64"]),
            _row("KMS 50 ms, 256 in flight", c["kms_50ms_256"]),
        ]
        ratio = c["kms_50ms_256"]["rps"]["median"] / c["kms_0ms_64"]["rps"]["median"]
        targets.append(
            f"| 3 | 256 in flight on a 50 ms KMS vs 64 on a 0 ms KMS | ≥ 0.9× | {_floor(ratio)}× | {_verdict(ratio, 0.9)} |"
        )
        out.append("")
    if "limiter" in data:
        out += [
            "### 4. Limiter under 10× overload",
            "",
            "| backend | configured/s | burst | offered/s | let through/s | accuracy | refusal p50 ms | refusal p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in data["limiter"].items():
            out.append(
                f"| {name} | {r['configured_per_s']:g} | {r['burst']} | {r['offered_per_s']:g} | {r['let_through_per_s']:.1f} "
                f"| {r['accuracy']:.3f} | {r['refusal_p50_ms']:.3f} | {r['refusal_p99_ms']:.3f} |"
            )
        out.append("")
    if "footprint" in data:
        fp = data["footprint"]
        plain = fp.get("without_sdk_data")
        out += [
            "### 5. Footprint (sidecar configuration)",
            "",
            "As the image runs it: the pruned SDK data on `AWS_DATA_PATH`; beside it, a "
            "plain install without it.",
            "",
            "| measure | as the image runs it | without the pruned SDK data |",
            "|---|---|---|",
            f"| start to health SERVING | {_m(fp['startup_s'], 2)} s | {_m(plain and plain['startup_s'], 2)} s |",
            f"| RSS idle | {_m(fp['rss_idle_mb'], 1)} MB | {_m(plain and plain['rss_idle_mb'], 1)} MB |",
            f"| RSS at 256 in flight | {_m(fp['rss_256_mb'], 1)} MB | {_m(plain and plain['rss_256_mb'], 1)} MB |",
            "",
        ]
        if "proxy_rss_idle_mb" in fp:
            out += [
                f"For comparison, idle after a few calls: the bare echo server "
                f"{fp['echo_rss_idle_mb']:.1f} MB; the bare proxy (a grpc.aio server and one "
                f"aiobotocore client, nothing else) {fp['proxy_rss_idle_mb']:.1f} MB.",
                "",
            ]
        targets += [
            f"| 5 | start to SERVING | ≤ 0.4 s | {fp['startup_s']['median']:.2f} s | {_verdict(fp['startup_s']['median'], 0.4, higher_is_better=False)} |",
            f"| 5 | RSS idle | ≤ 56 MB | {fp['rss_idle_mb']['median']:.1f} MB | {_verdict(fp['rss_idle_mb']['median'], 56, higher_is_better=False)} |",
            f"| 5 | RSS at 256 in flight | ≤ 72 MB | {fp['rss_256_mb']['median']:.1f} MB | {_verdict(fp['rss_256_mb']['median'], 72, higher_is_better=False)} |",
        ]
    if "resolution" in data:
        r = data["resolution"]
        series = r["describe_per_second"]
        cold, steady = series[:5], series[5:]
        mean = sum(steady) / len(steady) if steady else 0.0
        peak = max(steady) if steady else 0
        tens = [sum(steady[i : i + 10]) for i in range(0, len(steady) - 9, 10)]
        out += [
            "### 6. Key resolution over time (DescribeKey per second)",
            "",
            f"{r['keys']} keys read steadily for {r['seconds']:g} s ({r['rps']:.0f} req/s, 4 in "
            f"flight, {r['errors']} errors) at the default key-resolution TTL of "
            f"{r['ttl_s']:g} s. Each resolution is refreshed in the background at a random "
            "point in 0.5–0.9 of its TTL, so without jitter all 256 would expire, and be "
            "fetched again, in the same second every TTL.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| first 5 s (cold: every key resolved once) | {sum(cold)} |",
            f"| after: mean per second | {mean:.1f} |",
            f"| after: busiest second | {peak} |",
            f"| after: per 10 s | {', '.join(str(t) for t in tens)} |",
            "",
        ]
        flat = peak <= 4 * max(mean, 1.0)
        targets.append(
            f"| 6 | DescribeKey rate flat over {r['seconds']:g} s (busiest second ≤ 4× the mean) "
            f"| flat | busiest {peak}/s, mean {mean:.1f}/s | {'met' if flat else '**missed**'} |"
        )
    if "features" in data:
        ft = data["features"]
        floor = (
            ft["direct"]["client_cpu_ms_per_req"]["median"]
            + ft["echo"]["server_cpu_ms_per_req"]["median"]
        )
        out += [
            "### 7. What each feature costs (full path, many keys, 64 in flight)",
            "",
            "Each row switches features off (`bench/features.py`, bench only); each such run "
            "is paired with a run of the service with every feature on made just before it, "
            "and the saving is the median (min–max) of the paired differences in server CPU "
            "per request. The floor is the direct client's CPU per call plus the bare echo "
            f"server's, measured in this run ({floor:.3f} ms); the bare proxy is a grpc.aio "
            "server that makes the direct client's aiobotocore call and nothing else.",
            "",
            "| run | req/s | req/s vs direct | server CPU ms/req | vs floor | CPU saved (paired) | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        direct_rps = ft["direct"]["rps"]["median"]

        def feature_row(name: str, r: dict[str, Any], cpu_key: str) -> str:
            cpu = r[cpu_key]["median"]
            saved = r.get("saved_cpu_ms_per_req")
            return (
                f"| {name} | {_m(r['rps'])} | {r['rps']['median'] / direct_rps:.2f}× "
                f"| {_m(r[cpu_key], 3)} | {cpu / floor:.2f}× "
                f"| {f'{_m(saved, 3)} ms' if saved else '-'} | {_errors(r)} |"
            )

        rows = [
            ("direct aiobotocore client", ft["direct"], "client_cpu_ms_per_req"),
            ("bare echo (no KMS call)", ft["echo"], "server_cpu_ms_per_req"),
            ("bare proxy (gRPC + one aiobotocore call)", ft["proxy"], "server_cpu_ms_per_req"),
            ("PolicyService, every feature on", ft["every"], "server_cpu_ms_per_req"),
        ]
        for v in ft["variants"]:
            without = v["without"]
            name = f"without {without[0]}" if len(without) == 1 else "without any of them"
            rows.append((name, v, "server_cpu_ms_per_req"))
        out += [feature_row(*row) for row in rows]
        out.append("")
        off = ft["variants"][-1]["server_cpu_ms_per_req"]["median"] / floor
        proxy = ft["proxy"]["server_cpu_ms_per_req"]["median"] / floor
        targets.append(
            f"| 7 | CPU per request vs floor with every feature off (information) | - | {off:.2f}× (bare proxy {proxy:.2f}×) | - |"
        )
    out += [
        "### Targets",
        "",
        "| scenario | target | wanted | measured | |",
        "|---|---|---|---|---|",
        *targets,
    ]
    return "\n".join(out)


def main() -> None:
    data = json.loads(JSON_PATH.read_text())
    text = MD_PATH.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    MD_PATH.write_text(f"{head}{START}\n{render(data)}\n{END}{tail}")


if __name__ == "__main__":
    main()
