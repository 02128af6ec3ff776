"""Operations: /metrics with bounded labels, JSON access logs with request ids, the
health-only listener, the KMS canary, and a SIGTERM drain of 50 calls in flight."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import urllib.request
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.process import ServiceProcess
from tests.support.waiting import until

SERVING, NOT_SERVING = (
    health_pb2.HealthCheckResponse.SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING,
)


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {
        "metrics_listen": "127.0.0.1:0",
        "health_listen": "127.0.0.1:0",
        **getattr(request, "param", {}),
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def health_status(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return int(reply.status)


async def test_metrics_are_exposed_with_bounded_labels(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    faults.add(Rule("GetKeyPolicy", "error", "ThrottlingException", times=1))
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["KeyId"]))
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id="bad id"))
    text = await asyncio.to_thread(scrape, service.server.metrics_port)
    for needle in (
        'grpc_server_started_total{grpc_method="GetKeyPolicy",grpc_service="kmspolicy.v1.PolicyService",grpc_type="unary"}',
        'grpc_server_handled_total{grpc_code="OK",grpc_method="GetKeyPolicy"',
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="GetKeyPolicy"',
        "grpc_server_handling_seconds_bucket{",
        'kms_requests_total{operation="GetKeyPolicy",outcome="ok"}',
        'kms_requests_total{operation="GetKeyPolicy",outcome="kms_throttled"}',
        'kms_request_duration_seconds_bucket{le="0.005",operation="DescribeKey"}',
        'kms_retries_total{operation="GetKeyPolicy"}',
        "kms_policy_ratelimit_backend_degraded 0.0",
        "kms_policy_rpcs_in_flight",
        "kms_policy_audit_write_failures_total",
        'kms_policy_service_build_info{python="',
    ):
        assert needle in text, needle
    assert key["Arn"] not in text and key["KeyId"] not in text  # no unbounded labels


async def test_each_rpc_has_one_json_access_record(
    service: RunningService, key: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from kms_policy_service.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="kms_policy_service.access")
    await service.stub.GetKeyPolicy(
        pb.GetKeyPolicyRequest(key_id=key["Arn"]), metadata=(("x-request-id", "trace-7"),)
    )
    records = [r for r in caplog.records if r.name == "kms_policy_service.access"]
    assert len(records) == 1
    entry = json.loads(JsonFormatter().format(records[0]))
    assert entry["method"] == "GetKeyPolicy" and entry["code"] == "OK"
    assert (
        entry["request_id"] == "trace-7"
        and entry["caller"] == "local"
        and entry["key_arn"] == key["Arn"]
    )
    assert entry["kms_attempts"] == 2 and entry["duration_ms"] > 0  # DescribeKey + GetKeyPolicy
    assert entry["level"] == "INFO" and entry["time"].endswith("Z")


async def test_the_health_listener_serves_only_health(service: RunningService) -> None:
    port = service.server.health_port
    assert await health_status(port, "") == SERVING
    assert await health_status(port, "kmspolicy.v1.PolicyService") == SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id="alias/x"), timeout=2
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_health_listener_is_bounded_and_serves_check_only(
    service: RunningService,
) -> None:
    """Plaintext and unauthenticated on the pod IP: a 3 MB Check must not be read, a Watch
    must not hold a stream, and a second process must not share the port."""
    from kms_policy_service.health import PROBE_MAX_MESSAGE_BYTES, Health

    port = service.server.health_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="x" * 3_000_000), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            name = "y" * (PROBE_MAX_MESSAGE_BYTES + 1)
            await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in watch:
                pass
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await health_status(port, "") == SERVING  # probes still answered
    with pytest.raises(RuntimeError):  # grpcio raises when it cannot bind
        Health().probe_server(f"127.0.0.1:{port}", handshake_timeout_ms=1000, max_connections=4)


@pytest.mark.parametrize("settings_overrides", [{"metrics_max_connections": 1}], indirect=True)
async def test_the_metrics_listener_serves_at_most_its_flags_connections(
    service: RunningService,
) -> None:
    import socket

    from tests.unit.test_metrics_listener import HALF_REQUEST, closed_by_server, refusals

    port = service.server.metrics_port
    before = refusals("too_many")
    held = socket.create_connection(("127.0.0.1", port))
    try:
        held.sendall(HALF_REQUEST)  # holds the one connection the flag allows
        extra = socket.create_connection(("127.0.0.1", port))
        try:
            await until(lambda: closed_by_server(extra), what="the second connection closed")
        finally:
            extra.close()
        assert refusals("too_many") == before + 1
        assert not closed_by_server(held)
    finally:
        held.close()
    await until(lambda: _scrapes(port), what="scrapes served again")


def _scrapes(port: int) -> bool:
    try:
        return "kms_policy_service_build_info" in scrape(port)
    except OSError:
        return False


async def until_health(port: int, service: str, status: int, timeout: float = 10.0) -> None:
    """Poll the health service until `service` reports `status`, at most `timeout` seconds."""

    async def reached() -> bool:
        return await health_status(port, service) == status

    await until(reached, timeout=timeout, what=f"{service!r} to report {status}", interval=0.05)


@pytest.mark.parametrize(
    "settings_overrides", [{"kms_canary_key": "CANARY", "kms_canary_interval": 0.1}], indirect=True
)
async def test_the_kms_canary_reports_kms_reachability_without_touching_liveness(
    faults: KmsFaultInjector, kms: Any, settings_overrides: dict[str, Any]
) -> None:
    from kms_policy_service import Server
    from tests.conftest import service_settings

    canary = kms.create_key(Policy=policy_for())["KeyMetadata"]["Arn"]
    server = Server(
        service_settings(faults.url, **{**settings_overrides, "kms_canary_key": canary})
    )
    await server.startup()
    try:
        name = "kmspolicy.v1.PolicyService/kms"
        await until_health(server.health_port, name, SERVING)
        faults.add(Rule("DescribeKey", "error", "KMSInternalException", status=500))
        await until_health(server.health_port, name, NOT_SERVING)
        assert await health_status(server.health_port, "") == SERVING  # liveness unaffected
        assert await health_status(server.health_port, "kmspolicy.v1.PolicyService") == SERVING
    finally:
        await server.shutdown()


async def test_sigterm_drains_fifty_calls_in_flight_and_refuses_new_ones(
    faults: KmsFaultInjector, kms: Any
) -> None:
    keys = [kms.create_key(Policy=policy_for())["KeyMetadata"]["Arn"] for _ in range(50)]
    proc = ServiceProcess(
        [
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--kms-endpoint-url",
            faults.url,
            "--sts-endpoint-url",
            faults.url,
            "--shutdown-grace",
            "10",
            "--kms-rate-limit",
            "DescribeKey=1000:1000",
        ]
    ).start()
    health_port = next(int(r["port"]) for r in proc.logs if r.get("message") == "health listener")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            faults.add(Rule("GetKeyPolicy", "sleep", delay=1.5))
            calls = [
                asyncio.ensure_future(
                    stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=k), timeout=15)
                )
                for k in keys
            ]
            await until(
                lambda: faults.operations().count("GetKeyPolicy") >= 50,
                what="all 50 calls held in KMS",
            )
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            await until_health(health_port, "", NOT_SERVING)
            assert await health_status(health_port, "kmspolicy.v1.PolicyService") == NOT_SERVING
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await pb_grpc.PolicyServiceStub(fresh).GetKeyPolicy(
                        pb.GetKeyPolicyRequest(key_id=keys[0]), timeout=2
                    )
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            replies = await asyncio.gather(*calls)
            assert [r.key_arn for r in replies] == keys
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        proc.stop()
