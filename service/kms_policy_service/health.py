"""grpc.health.v1: the serving status, the optional KMS canary, and the probe-only listener.

`""` and `kmspolicy.v1.PolicyService` are SERVING once the KMS client and credentials are
ready and NOT_SERVING while draining; they never depend on KMS being reachable
(liveness must not restart pods when KMS is slow). The canary, when configured,
reports KMS reachability under its own name for readiness gating.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kms_policy_service.contract import POLICY_SERVICE

log = logging.getLogger(__name__)

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

    def probe_server(self, address: str) -> tuple[grpc.aio.Server, int]:
        """A listener serving only grpc.health.v1 (kubelet probes dial the pod IP)."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address}")
        return server, port
