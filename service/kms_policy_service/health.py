"""grpc.health.v1 statuses for the whole server and for PolicyService."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

SERVICE_NAME = "kmspolicy.v1.PolicyService"
SERVED = ("", SERVICE_NAME)


class Health:
    """Owns the health servicer; the lifecycle flips it, nothing else does."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()

    async def _set(self, status: int) -> None:
        for name in SERVED:
            await self.servicer.set(name, status)

    async def serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
