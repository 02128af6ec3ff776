"""The server lifecycle: build, bind, start, wait for stop, drain, close.

    serve: signals captured -> try: startup -> wait for SIGTERM/SIGINT
                               finally: shutdown

startup: authz, TLS, audit (local, cheap) -> [local KMS] -> KMS clients ->
         components.build_components (STS identity, limiter, gateway, servicer...)
         -> bind the gRPC listener -> health/metrics listeners -> start -> SERVING.
shutdown: health NOT_SERVING -> server.stop(grace) -> cancelled handlers and
          read-backs finish -> background tasks -> close the KMS clients, Redis and
          the audit log (one AsyncExitStack, in reverse order). It also runs after a
          failed start, undoing whatever had been done.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import functools
import logging
import shlex
import signal
import time
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kms_policy_service import metrics
from kms_policy_service._version import __version__
from kms_policy_service.admission import Admission
from kms_policy_service.audit import AuditLog
from kms_policy_service.authz import Authorizer
from kms_policy_service.backend import KmsBackend
from kms_policy_service.components import (
    Components,
    account_roles,
    build_components,
    build_local,
)
from kms_policy_service.contract import POLICY_SERVICE
from kms_policy_service.guardrail_file import GuardrailsFile
from kms_policy_service.health import Health
from kms_policy_service.local_kms import DemoKey
from kms_policy_service.ratelimit import RateLimiter
from kms_policy_service.request import RequestContext
from kms_policy_service.servicer import PolicyServicer
from kms_policy_service.settings import Settings, split_host_port
from kms_policy_service.validation import parse_key_id
from kmspolicy.v1 import policy_service_pb2_grpc

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
INSECURE_WARNING_INTERVAL_SECONDS = 3600.0
KEEPALIVE_MIN_PING_MS = 30_000


def create_server(
    settings: Settings,
    servicer: PolicyServicer,
    health: Health,
    admission: Admission,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server with PolicyService, health and reflection, bound to settings.listen."""
    server = grpc.aio.server(
        interceptors=[admission],
        options=[
            # Refuse oversized messages in gRPC itself, before any parsing.
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Accept the clients' keepalive pings on idle long-lived (sidecar) channels
            # (our client pings every 60 s; the gRPC default would answer GOAWAY).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
            # What one connection may hold, and for how long (Go net/http's levers).
            ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
            # Each open connection costs memory before any call: bound how many, and how
            # long one may take to say who it is (a silent TLS peer holds a slot).
            ("grpc.max_allowed_incoming_connections", settings.max_connections),
            ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout)),
            ("grpc.max_connection_idle_ms", _ms(settings.max_connection_idle)),
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace)),
        ],
        # Past this many RPCs at once gRPC itself answers RESOURCE_EXHAUSTED: memory
        # stays bounded however hard the service is pushed.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    policy_service_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        (POLICY_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    if credentials is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, credentials)
    return server, port  # grpcio >= 1.85 raises when it cannot bind


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Server:
    """One running PolicyService. `backend` replaces aiobotocore (tests, benchmarks)."""

    def __init__(self, settings: Settings, *, backend: KmsBackend | None = None) -> None:
        self.settings = settings
        self.port = 0
        self.health = Health()
        self.demo_key: DemoKey | None = None
        self.limiter: RateLimiter | None = None
        self.authorizer: Authorizer | None = None
        self.audit: AuditLog | None = None
        self.guardrails: GuardrailsFile | None = None
        self.admission: Admission | None = None
        self.servicer: PolicyServicer | None = None
        self._backend = backend
        self._stack = AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._probe_server: grpc.aio.Server | None = None
        self.health_port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._should_exit = asyncio.Event()

    async def serve(self) -> None:
        # Signals first, so a SIGTERM during a slow start still stops cleanly, and a
        # failed start (port in use) still runs every cleanup registered so far.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        # Always handled (never the default, which kills the process): reload what is
        # configured and reopen the audit file (logrotate's postrotate).
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.startup()
            await self._should_exit.wait()
            log.info("stop requested: draining for up to %.1fs", self.settings.shutdown_grace)
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def reload(self) -> None:
        """SIGHUP: re-read the authorization policy and guardrails, reopen the audit log."""
        log.info("SIGHUP: reloading")
        if self.authorizer is not None and self.authorizer.path is not None:
            self.authorizer.reload()
        if self.guardrails is not None and self.guardrails.path is not None:
            self.guardrails.reload()
        if self.audit is not None:
            self.audit.reopen()

    def request_stop(self) -> None:
        """Signal-safe: only sets the flag; serve() does the rest."""
        self._should_exit.set()

    async def startup(self) -> None:
        """Build, bind, start; on failure the caller's shutdown() undoes what was done."""
        settings = self.settings
        await self.health.not_serving()
        local = build_local(settings, self._stack)  # a bad file fails before KMS is touched
        self.authorizer, self.audit = local.authorizer, local.audit
        self.guardrails = local.guardrails
        backend = self._backend
        if backend is None:
            backend, settings = await self._open_kms(settings)
        parts = await build_components(settings, backend, local, self._stack)
        log.info(
            "KMS ready",
            extra={
                "region": settings.region,
                "account": parts.account,
                "principal": parts.principal.arn,
            },
        )
        self.limiter, self.admission, self.servicer = parts.limiter, parts.admission, parts.servicer
        _export_gauges(parts)
        self._server, self.port = create_server(
            settings, parts.servicer, self.health, parts.admission, local.credentials
        )
        await self._start_side_listeners(settings)
        await self._server.start()
        self._start_background(settings, parts)
        _release_startup_memory()
        await self.health.serving()
        log.info(
            "serving",
            extra={"listen": settings.listen, "port": self.port, "tls": settings.tls},
        )
        self._log_demo(settings)

    async def _start_side_listeners(self, settings: Settings) -> None:
        if settings.health_listen:
            self._probe_server, self.health_port = self.health.probe_server(
                settings.health_listen,
                handshake_timeout_ms=_ms(settings.handshake_timeout),
                max_connections=settings.health_max_connections,
            )
            await self._probe_server.start()
            log.info(
                "health listener",
                extra={"listen": settings.health_listen, "port": self.health_port},
            )
        if settings.metrics_listen:
            host, port = split_host_port(settings.metrics_listen)
            httpd = metrics.serve(
                host,
                port,
                request_timeout=settings.metrics_request_timeout,
                max_connections=settings.metrics_max_connections,
            )
            self.metrics_port = int(httpd.server_address[1])
            log.info(
                "metrics listener",
                extra={"listen": settings.metrics_listen, "port": self.metrics_port},
            )
            self._stack.callback(httpd.server_close)
            self._stack.push_async_callback(asyncio.to_thread, httpd.shutdown)
        metrics.set_build_info(__version__)

    def _start_background(self, settings: Settings, parts: Components) -> None:
        if settings.kms_canary_key:
            ref = parse_key_id(settings.kms_canary_key, field="--kms-canary-key")
            region = parts.resolver.region_of(ref)
            canary_ctx = functools.partial(_canary_context, settings.kms_canary_interval)
            gateway = parts.gateway
            self._tasks.append(
                asyncio.create_task(
                    self.health.canary(
                        lambda: gateway.describe_key(ref.raw, region=region, ctx=canary_ctx()),
                        settings.kms_canary_interval,
                    )
                )
            )
        if self.authorizer is not None and self.authorizer.path is not None:
            self._tasks.append(
                asyncio.create_task(self.authorizer.watch(settings.authz_reload_interval))
            )
        if self.guardrails is not None and self.guardrails.path is not None:
            self._tasks.append(
                asyncio.create_task(self.guardrails.watch(settings.authz_reload_interval))
            )
        if settings.insecure and not settings.listen_is_loopback:
            self._tasks.append(asyncio.create_task(self._warn_insecure()))

    async def _open_kms(self, settings: Settings) -> tuple[KmsBackend, Settings]:
        from kms_policy_service.kms import AioKmsBackend, ClientConfig

        credentials = None
        if settings.local_kms:
            from kms_policy_service.local_kms import LOCAL_CREDENTIALS, LocalKms

            local = self._stack.enter_context(LocalKms(settings.region))
            settings = dataclasses.replace(
                settings, kms_endpoint_url=local.endpoint_url, sts_endpoint_url=local.endpoint_url
            )
            credentials = LOCAL_CREDENTIALS
        config = ClientConfig(
            region=settings.region,
            regions=frozenset({settings.region, *settings.allowed_regions}),
            kms_endpoint_url=settings.kms_endpoint_url,
            sts_endpoint_url=settings.sts_endpoint_url,
            connect_timeout=settings.kms_connect_timeout,
            read_timeout=settings.kms_read_timeout,
            max_pool_connections=settings.kms_max_pool_connections,
            accounts=account_roles(settings),
            max_caller_sessions=settings.max_caller_sessions,
        )
        backend = await self._stack.enter_async_context(
            AioKmsBackend.open(config, credentials=credentials)
        )
        if settings.local_kms:
            identity = await backend.get_caller_identity()
            self.demo_key = local.create_demo_key(identity.account)
            log.info("local KMS at %s", local.endpoint_url)
        return backend, settings

    def _log_demo(self, settings: Settings) -> None:
        if self.demo_key is None:
            return
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

    async def _warn_insecure(self) -> None:
        while True:
            log.warning(
                "INSECURE: %s is reachable from the network without %s; anyone who can reach "
                "it can rewrite key policies",
                self.settings.listen,
                "TLS" if not self.settings.tls else "an authorization policy",
            )
            await asyncio.sleep(INSECURE_WARNING_INTERVAL_SECONDS)

    async def shutdown(self) -> None:
        await self.health.shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace)
        if self._probe_server is not None:
            await self._probe_server.stop(0)
        if self.servicer is not None:
            await self.servicer.drain()  # read-backs of unknown outcomes, then the audit closes
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        log.info("stopped")


def _export_gauges(parts: Components) -> None:
    """Gauges read at scrape time: nothing on the request path."""
    servicer, gateway, shared = parts.servicer, parts.gateway, parts.limiter.shared
    metrics.rpcs_in_flight.set_function(lambda: servicer.in_flight)
    metrics.kms_requests_in_flight.set_function(lambda: gateway.in_flight)
    metrics.ratelimit_backend_degraded.set_function(lambda: 1 if shared.degraded else 0)


def _canary_context(interval: float) -> RequestContext:
    return RequestContext(
        request_id="kms-canary",
        method="KmsCanary",
        caller="kms-canary",
        peer="",
        rate_key="kms-canary",
        deadline=time.monotonic() + min(interval, 10.0),
    )


def _release_startup_memory() -> None:
    """Hand back to the OS what start-up parsed and dropped (botocore's JSON models).

    A sidecar's memory is paid once per application pod; glibc keeps freed heap
    pages unless asked to trim them. No gc.collect() first: measured, it freed nothing
    the trim did not already return, and took ~30 ms of start-up.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.malloc_trim(0)
