"""SIGTERM drains in-flight calls to OK, refuses new ones, and exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.process import ServiceProcess, loopback_service
from tests.support.waiting import until


async def until_draining(health_port: int, timeout: float = 10.0) -> None:
    """Poll the health listener until the service reports NOT_SERVING (it has begun to drain)."""

    async def draining() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)

    await until(draining, timeout=timeout, what="the service to begin draining")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_drains_an_in_flight_call_to_ok_and_exits_zero(
    faults: KmsFaultInjector, key: dict[str, Any], sig: signal.Signals
) -> None:
    proc = ServiceProcess(
        [
            *loopback_service(on=faults.url),
            "--health-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "5",
        ]
    ).start()
    health_port = next(int(r["port"]) for r in proc.logs if r.get("message") == "health listener")
    try:
        faults.add(Rule("GetKeyPolicy", "sleep", delay=1.0))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            in_flight = asyncio.ensure_future(
                stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
            )
            await until(lambda: "GetKeyPolicy" in faults.operations(), what="the call at KMS")
            assert proc.proc is not None
            proc.proc.send_signal(sig)
            await until_draining(health_port)
            # A new call on a fresh connection is refused while draining.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as fresh:
                try:
                    await pb_grpc.PolicyServiceStub(fresh).GetKeyPolicy(
                        pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=2
                    )
                    refused = False
                except grpc.aio.AioRpcError as exc:
                    refused = exc.code() == grpc.StatusCode.UNAVAILABLE
            assert refused
            reply = await in_flight
            assert reply.key_arn == key["Arn"]
        started = time.monotonic()
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert time.monotonic() - started < 10
    finally:
        proc.stop()


async def test_sighup_without_an_authz_policy_reloads_and_keeps_serving(
    faults: KmsFaultInjector, key: dict[str, Any], tmp_path: Any
) -> None:
    audit = tmp_path / "audit.log"
    proc = ServiceProcess(
        [*loopback_service(on=faults.url), "--audit-log", str(audit)]  # the sidecar's flags
    ).start()
    try:
        assert proc.proc is not None
        audit.rename(tmp_path / "audit.log.1")  # logrotate, then its postrotate HUP
        proc.proc.send_signal(signal.SIGHUP)
        running = proc.proc

        def reopened() -> bool:  # at the configured path
            assert running.poll() is None, "SIGHUP killed the service"
            return audit.exists()

        await until(reopened, what="the audit log reopened")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
            reply = await pb_grpc.PolicyServiceStub(channel).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10
            )
        assert reply.key_arn == key["Arn"]
        assert proc.proc.poll() is None
    finally:
        proc.stop()
