"""The server lifecycle: build, register, start, wait for stop, drain, close.

    serve -> startup -> (wait for SIGTERM/SIGINT) -> shutdown

startup: [local KMS] -> KMS clients -> STS identity -> components -> gRPC listener
         -> health SERVING.
shutdown: health NOT_SERVING -> server.stop(grace) -> close the KMS clients (one
          AsyncExitStack, in reverse order of creation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
import signal
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kms_policy_service.backend import KmsBackend
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.health import Health
from kms_policy_service.local_kms import DemoKey
from kms_policy_service.ratelimit import Limits, LocalStore, RateLimiter, SharedStore
from kms_policy_service.ratelimit.redis_store import RedisStore
from kms_policy_service.reads import PolicyReads
from kms_policy_service.resolver import KeyResolver
from kms_policy_service.servicer import PolicyServicer
from kms_policy_service.settings import Settings
from kms_policy_service.validation import ServicePrincipal
from kmspolicy.v1 import policy_service_pb2, policy_service_pb2_grpc

log = logging.getLogger(__name__)

POLICY_SERVICE = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name


def create_server(
    settings: Settings, servicer: PolicyServicer, health: Health
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server with PolicyService, health and reflection, bound to settings.listen."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (
            POLICY_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(settings.listen)
    if port == 0:
        raise OSError(f"could not bind {settings.listen}")
    return server, port


class Server:
    """One running PolicyService. `backend` replaces aiobotocore (tests, benchmarks)."""

    def __init__(self, settings: Settings, *, backend: KmsBackend | None = None) -> None:
        self.settings = settings
        self.port = 0
        self.health = Health()
        self._backend = backend
        self._stack = AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._should_exit = asyncio.Event()
        self.demo_key: DemoKey | None = None
        self.limiter: RateLimiter | None = None

    async def serve(self) -> None:
        await self.startup()
        try:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            await self._should_exit.wait()
            log.info("stop requested: draining for up to %.1fs", self.settings.shutdown_grace)
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        """Signal-safe: only sets the flag; serve() does the rest."""
        self._should_exit.set()

    async def startup(self) -> None:
        settings = self.settings
        await self.health.not_serving()
        backend = self._backend
        if backend is None:
            backend, settings = await self._open_kms(settings)
        identity = await backend.get_caller_identity()
        principal = ServicePrincipal.from_caller_identity(identity.account, identity.arn)
        log.info(
            "KMS ready",
            extra={
                "region": settings.region,
                "account": identity.account,
                "principal": principal.arn,
            },
        )
        limiter = RateLimiter(
            Limits(
                operations=settings.kms_rate_limits,
                caller=settings.caller_rate_limit,
                key_writes=settings.key_write_rate_limit,
                max_queue_wait=settings.max_queue_wait,
                max_waiters=settings.max_waiters,
            ),
            await self._shared_store(settings),
        )
        self.limiter = limiter
        gateway = KmsGateway(
            limiter,
            RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base=settings.retry_base,
                cap=settings.retry_cap,
                margin=settings.deadline_margin,
            ),
            max_concurrency=settings.max_concurrency,
            max_waiters=settings.max_waiters,
        )
        resolver = KeyResolver(
            backend,
            gateway,
            account=identity.account,
            home_region=settings.region,
            allowed_regions=settings.allowed_regions,
            ttl=settings.key_cache_ttl,
            max_entries=settings.key_cache_max_entries,
        )
        servicer = PolicyServicer(
            backend=backend,
            gateway=gateway,
            resolver=resolver,
            principal=principal,
            reads=PolicyReads(cache_ttl=settings.read_cache_ttl),
            default_deadline=settings.default_deadline,
        )
        self._server, self.port = create_server(settings, servicer, self.health)
        await self._server.start()
        await self.health.serving()
        log.info("serving", extra={"listen": settings.listen, "port": self.port})
        if self.demo_key is not None:
            host = settings.listen.rsplit(":", 1)[0]
            grpcurl = (
                f'grpcurl -plaintext -d \'{{"key_id": "{self.demo_key.arn}"}}\' '
                f"{shlex.quote(f'{host}:{self.port}')} {POLICY_SERVICE}/GetKeyPolicy"
            )
            log.info(
                "demo key %s (%s) ready; try: %s",
                self.demo_key.arn,
                self.demo_key.alias,
                grpcurl,
                extra={"demo_key_arn": self.demo_key.arn, "grpcurl": grpcurl},
            )

    async def _shared_store(self, settings: Settings) -> SharedStore:
        if not settings.rate_limit_backend:
            return LocalStore()
        store = RedisStore(
            settings.rate_limit_backend, fallback_fraction=settings.rate_limit_fallback_fraction
        )
        self._stack.push_async_callback(store.close)
        return store

    async def _open_kms(self, settings: Settings) -> tuple[KmsBackend, Settings]:
        from kms_policy_service.kms import AioKmsBackend

        credentials = None
        if settings.local_kms:
            from kms_policy_service.local_kms import LOCAL_CREDENTIALS, LocalKms

            local = self._stack.enter_context(LocalKms(settings.region))
            settings = dataclasses.replace(
                settings, kms_endpoint_url=local.endpoint_url, sts_endpoint_url=local.endpoint_url
            )
            credentials = LOCAL_CREDENTIALS
        backend = await self._stack.enter_async_context(
            AioKmsBackend.open(settings, credentials=credentials)
        )
        if settings.local_kms:
            identity = await backend.get_caller_identity()
            self.demo_key = local.create_demo_key(identity.account)
            log.info("local KMS at %s", local.endpoint_url)
        return backend, settings

    async def shutdown(self) -> None:
        await self.health.shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
        await self._stack.aclose()
        log.info("stopped")
