"""grpc.health.v1: the serving status, the optional KMS canary, and the probe-only listener.

`""` and `kmspolicy.v1.PolicyService` are SERVING once the KMS client and credentials are
ready and NOT_SERVING while draining; they never depend on KMS being reachable
(liveness must not restart pods when KMS is slow). The canary, when configured,
reports KMS reachability under its own name for readiness gating.

The probe-only listener (`--health-listen`) answers Check and nothing else, within
fixed bounds: it is plaintext and unauthenticated on the pod IP, so whatever reaches
it must not cost the process memory or hold what the kubelet's next probe needs.
Watch is not served there (kubelet probes use Check; a Watch holds a stream forever).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kms_policy_service.contract import POLICY_SERVICE

log = logging.getLogger(__name__)

# The probe listener's bounds. A HealthCheckRequest is a service name: 1 KiB is ample.
PROBE_MAX_MESSAGE_BYTES = 1024
PROBE_MAX_STREAMS_PER_CONNECTION = 4
PROBE_MAX_CONNECTION_IDLE_MS = 10_000  # kubelet dials a new connection per probe

SERVICE_NAME = POLICY_SERVICE
CANARY_NAME = f"{POLICY_SERVICE}/kms"
SERVED = ("", SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Health:
    """Owns the health servicer; the lifecycle and the canary flip it, nothing else does."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def _set(self, status: int) -> None:
        for name in SERVED:
            await self.servicer.set(name, status)

    async def serving(self) -> None:
        await self._set(SERVING)

    async def not_serving(self) -> None:
        await self._set(NOT_SERVING)

    async def shutdown(self) -> None:
        """Everything NOT_SERVING at once, and stays so."""
        await self.servicer.enter_graceful_shutdown()

    async def canary(self, check: Callable[[], Awaitable[object]], interval: float) -> None:
        """Run `check` (a DescribeKey through the limiter) every `interval` s until cancelled."""
        await self.servicer.set(CANARY_NAME, NOT_SERVING)
        healthy: bool | None = None
        while True:
            try:
                await check()
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok = False
                if healthy is not False:
                    log.warning("KMS canary failed: %s", exc)
            if ok and healthy is False:
                log.warning("KMS canary recovered")
            healthy = ok
            await self.servicer.set(CANARY_NAME, SERVING if ok else NOT_SERVING)
            await asyncio.sleep(interval)

    def probe_server(
        self, address: str, *, handshake_timeout_ms: int, max_connections: int
    ) -> tuple[grpc.aio.Server, int]:
        """A listener serving only grpc.health.v1 Check (kubelet probes dial the pod IP)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", PROBE_MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),  # a second instance on the port fails to start
                ("grpc.max_concurrent_streams", PROBE_MAX_STREAMS_PER_CONNECTION),
                ("grpc.max_allowed_incoming_connections", max_connections),
                ("grpc.server_handshake_timeout_ms", handshake_timeout_ms),
                ("grpc.max_connection_idle_ms", PROBE_MAX_CONNECTION_IDLE_MS),
            ],
            # a Check is short: as many at once as connections, no more
            maximum_concurrent_rpcs=max_connections,
        )
        health_pb2_grpc.add_HealthServicer_to_server(_CheckOnly(self.servicer), server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address}")
        return server, port


class _CheckOnly(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Check answered by the shared servicer; Watch refused (see the module docstring)."""

    def __init__(self, servicer: health.aio.HealthServicer) -> None:
        self._servicer = servicer

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return await self._servicer.Check(request, context)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "Watch is served on the main listener only"
        )
