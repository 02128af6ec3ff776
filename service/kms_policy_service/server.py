"""The server lifecycle: build, register, start, wait for stop, drain, close.

    serve -> startup -> (wait for SIGTERM/SIGINT) -> shutdown

startup: [local KMS] -> KMS clients -> STS identity -> limiter, locks, authz, audit
         -> servicer -> gRPC listener (TLS when configured) -> health SERVING.
shutdown: health NOT_SERVING -> server.stop(grace) -> background tasks -> close the
          KMS clients, Redis and the audit log (one AsyncExitStack, in reverse order).
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import functools
import gc
import logging
import shlex
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kms_policy_service import __version__, metrics
from kms_policy_service.admission import Admission, AdmissionLimits
from kms_policy_service.audit import AuditLog
from kms_policy_service.authz import Authorizer
from kms_policy_service.backend import KmsBackend
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.health import Health
from kms_policy_service.identity import Identifier
from kms_policy_service.local_kms import DemoKey
from kms_policy_service.locks import KeyLocks
from kms_policy_service.ratelimit import Limits, LocalStore, RateLimiter, SharedStore
from kms_policy_service.reads import PolicyReads
from kms_policy_service.request import RequestContext
from kms_policy_service.resolver import KeyResolver
from kms_policy_service.servicer import PolicyServicer
from kms_policy_service.settings import Settings, split_host_port
from kms_policy_service.tls import server_credentials
from kms_policy_service.validation import ServicePrincipal, parse_key_id
from kmspolicy.v1 import policy_service_pb2, policy_service_pb2_grpc

log = logging.getLogger(__name__)

POLICY_SERVICE = policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name
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
    if port == 0:
        raise OSError(f"could not bind {settings.listen}")
    return server, port


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
        """SIGHUP: re-read the authorization policy (if any) and reopen the audit log."""
        log.info("SIGHUP: reloading")
        if self.authorizer is not None and self.authorizer.path is not None:
            self.authorizer.reload()
        if self.audit is not None:
            self.audit.reopen()

    def request_stop(self) -> None:
        """Signal-safe: only sets the flag; serve() does the rest."""
        self._should_exit.set()

    async def startup(self) -> None:
        settings = self.settings
        await self.health.not_serving()
        # Cheap, local things first: a bad authz file or TLS pair fails before KMS is touched.
        self.authorizer = Authorizer(Path(settings.authz_policy) if settings.authz_policy else None)
        credentials = None
        if settings.tls_cert and settings.tls_key:
            credentials, _ = server_credentials(
                Path(settings.tls_cert),
                Path(settings.tls_key),
                Path(settings.tls_client_ca) if settings.tls_client_ca else None,
            )
        audit = None
        if settings.audit_log:
            audit = AuditLog(
                settings.audit_log,
                omit_policies=settings.audit_omit_policies,
                refusal_rate=settings.audit_refusal_rate,
                refusal_total_rate=settings.audit_refusal_total_rate,
                refusal_callers=settings.audit_refusal_callers,
                unauthorized_policy_bytes=settings.audit_unauthorized_policy_bytes,
            )
            self._stack.callback(audit.close)
        self.audit = audit

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

        self.limiter = RateLimiter(
            Limits(
                operations=settings.kms_rate_limits,
                caller=settings.caller_rate_limit,
                key_writes=settings.key_write_rate_limit,
                max_queue_wait=settings.max_queue_wait,
                max_waiters=settings.max_waiters,
            ),
            self._shared_store(settings),
        )
        gateway = KmsGateway(
            self.limiter,
            RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base=settings.retry_base,
                cap=settings.retry_cap,
                margin=settings.deadline_margin,
            ),
            max_concurrency=settings.max_concurrency,
            max_waiters=settings.max_waiters,
        )
        locks = KeyLocks(settings.rate_limit_backend, lease=settings.lock_lease)
        self._stack.push_async_callback(locks.close)
        servicer_resolver = KeyResolver(
            backend,
            gateway,
            account=identity.account,
            home_region=settings.region,
            allowed_regions=settings.allowed_regions,
            ttl=settings.key_cache_ttl,
            max_entries=settings.key_cache_max_entries,
        )
        identifier = Identifier(
            loopback_listener=settings.listen_is_loopback,
            trusted_proxies=settings.trusted_proxies,
            tls=settings.tls,
        )
        admission = Admission(
            AdmissionLimits(
                max_rpcs_per_caller=min(settings.max_rpcs_per_caller, settings.max_concurrent_rpcs),
                receive_timeout=settings.request_receive_timeout,
                caller_rpc_rate=settings.caller_rpc_rate_limit,
                caller_refusal_rate=settings.caller_refusal_rate_limit,
            ),
            identifier,
        )
        self.admission = admission
        self.servicer = servicer = PolicyServicer(
            backend=backend,
            gateway=gateway,
            resolver=servicer_resolver,
            principal=principal,
            reads=PolicyReads(cache_ttl=settings.read_cache_ttl),
            identifier=identifier,
            authorizer=self.authorizer,
            audit=audit,
            locks=locks,
            default_deadline=settings.default_deadline,
            max_deadline=settings.max_deadline,
            max_findings=settings.max_findings,
            max_lock_wait=settings.max_lock_wait,
        )

        # Gauges read at scrape time: nothing on the request path.
        metrics.rpcs_in_flight.set_function(lambda: servicer.in_flight)
        metrics.kms_requests_in_flight.set_function(lambda: gateway.in_flight)
        shared = self.limiter.shared
        metrics.ratelimit_backend_degraded.set_function(lambda: 1 if shared.degraded else 0)
        self._server, self.port = create_server(
            settings, servicer, self.health, admission, credentials
        )
        if settings.health_listen:
            self._probe_server, self.health_port = self.health.probe_server(settings.health_listen)
            await self._probe_server.start()
            log.info(
                "health listener",
                extra={"listen": settings.health_listen, "port": self.health_port},
            )
        if settings.metrics_listen:
            host, port = split_host_port(settings.metrics_listen)
            httpd = metrics.serve(host, port)
            self.metrics_port = int(httpd.server_address[1])
            log.info(
                "metrics listener",
                extra={"listen": settings.metrics_listen, "port": self.metrics_port},
            )
            self._stack.callback(httpd.server_close)
            self._stack.push_async_callback(asyncio.to_thread, httpd.shutdown)
        metrics.set_build_info(__version__)
        await self._server.start()
        if settings.kms_canary_key:
            ref = parse_key_id(settings.kms_canary_key, field="--kms-canary-key")
            region = servicer_resolver.region_of(ref)
            canary_ctx = functools.partial(_canary_context, settings.kms_canary_interval)
            self._tasks.append(
                asyncio.create_task(
                    self.health.canary(
                        lambda: gateway.call(
                            "DescribeKey",
                            lambda: backend.describe_key(ref.raw, region=region),
                            ctx=canary_ctx(),
                        ),
                        settings.kms_canary_interval,
                    )
                )
            )
        if self.authorizer.path is not None:
            self._tasks.append(
                asyncio.create_task(self.authorizer.watch(settings.authz_reload_interval))
            )
        if settings.insecure and not settings.listen_is_loopback:
            self._tasks.append(asyncio.create_task(self._warn_insecure()))
        _release_startup_memory()
        await self.health.serving()
        log.info(
            "serving",
            extra={"listen": settings.listen, "port": self.port, "tls": settings.tls},
        )
        self._log_demo(settings)

    def _shared_store(self, settings: Settings) -> SharedStore:
        if not settings.rate_limit_backend:
            return LocalStore()
        from kms_policy_service.ratelimit.redis_store import RedisStore  # only when configured

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
    pages unless asked to trim them.
    """
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    libc.malloc_trim(0)
