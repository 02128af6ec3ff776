"""Wiring: every part of a service, built from Settings and an open KMS backend.

Pure construction: nothing listens and nothing runs in the background, so tests can
build a whole service over the in-memory backend. The lifecycle (server.py) starts
the listeners around what this returns.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc

from kms_policy_service.accounts import SESSION_NAME, AccountRoles
from kms_policy_service.admission import Admission, AdmissionLimits
from kms_policy_service.audit import AuditLog
from kms_policy_service.authz import Authorizer
from kms_policy_service.backend import KmsBackend
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.guardrail_file import GuardrailsFile
from kms_policy_service.identity import Identifier
from kms_policy_service.locks import KeyLocks
from kms_policy_service.ratelimit import Limits, LocalStore, RateLimiter, SharedStore
from kms_policy_service.reads import PolicyReads
from kms_policy_service.resolver import KeyResolver
from kms_policy_service.rpc import RpcFrame
from kms_policy_service.servicer import PolicyServicer
from kms_policy_service.settings import Settings
from kms_policy_service.tls import server_credentials
from kms_policy_service.validation import ServicePrincipal
from kms_policy_service.validation.lockout import ServicePrincipals
from kms_policy_service.writes import PolicyWriter


@dataclass(frozen=True)
class LocalParts:
    """What needs no network, built first: a bad file fails before KMS is touched."""

    authorizer: Authorizer
    guardrails: GuardrailsFile
    audit: AuditLog | None
    credentials: grpc.ServerCredentials | None  # None: plaintext listener


@dataclass(frozen=True)
class Components:
    principal: ServicePrincipal
    principals: ServicePrincipals  # home, and the role in each member account
    account: str
    limiter: RateLimiter
    gateway: KmsGateway
    resolver: KeyResolver
    identifier: Identifier
    admission: Admission
    servicer: PolicyServicer


def build_local(settings: Settings, stack: AsyncExitStack) -> LocalParts:
    authorizer = Authorizer(Path(settings.authz_policy) if settings.authz_policy else None)
    guardrails = GuardrailsFile(Path(settings.guardrails) if settings.guardrails else None)
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
        stack.callback(audit.close)
    return LocalParts(authorizer, guardrails, audit, credentials)


async def build_components(
    settings: Settings, backend: KmsBackend, local: LocalParts, stack: AsyncExitStack
) -> Components:
    """Everything that serves calls, over `backend` (STS identity asked once, here)."""
    identity = await backend.get_caller_identity()
    principal = ServicePrincipal.from_caller_identity(identity.account, identity.arn)
    accounts = account_roles(settings)
    principals = ServicePrincipals(
        principal,
        {
            account: ServicePrincipal.for_role(role, SESSION_NAME)
            for account, role in accounts.roles.items()
        },
    )
    store, redis = _shared_store(settings, stack)
    limiter = RateLimiter(
        Limits(
            operations=settings.kms_rate_limits,
            caller=settings.caller_rate_limit,
            key_writes=settings.key_write_rate_limit,
            max_queue_wait=settings.max_queue_wait,
            max_waiters=settings.max_waiters,
            account=settings.account_rate_limit,
        ),
        store,
    )
    gateway = KmsGateway(
        backend,
        limiter,
        RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base=settings.retry_base,
            cap=settings.retry_cap,
            margin=settings.deadline_margin,
        ),
        max_concurrency=settings.max_concurrency,
        max_waiters=settings.max_waiters,
        home_account=identity.account,
        accounts=accounts,
    )
    resolver = KeyResolver(
        gateway,
        account=identity.account,
        home_region=settings.region,
        allowed_regions=settings.allowed_regions,
        ttl=settings.key_cache_ttl,
        max_entries=settings.key_cache_max_entries,
        member_accounts=accounts.accounts,
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
    reads = PolicyReads(
        cache_ttl=settings.read_cache_ttl,
        coalescing_window=settings.read_coalescing_window,
        reserve=settings.deadline_margin,  # what the KMS call keeps back (gateway)
    )
    servicer = PolicyServicer(
        frame=RpcFrame(
            identifier,
            default_deadline=settings.default_deadline,
            max_deadline=settings.max_deadline,
        ),
        gateway=gateway,
        resolver=resolver,
        principals=principals,
        reads=reads,
        writer=PolicyWriter(
            gateway,
            reads,
            KeyLocks(redis, lease=settings.lock_lease),
            max_lock_wait=settings.max_lock_wait,
        ),
        authorizer=local.authorizer,
        audit=local.audit,
        guardrails=local.guardrails,
        max_findings=settings.max_findings,
    )
    return Components(
        principal=principal,
        principals=principals,
        account=identity.account,
        limiter=limiter,
        gateway=gateway,
        resolver=resolver,
        identifier=identifier,
        admission=admission,
        servicer=servicer,
    )


def account_roles(settings: Settings) -> AccountRoles:
    return AccountRoles(
        settings.account_roles,
        external_id=settings.assume_role_external_id,
        caller_session_tags=settings.caller_session_tags,
    )


def _shared_store(settings: Settings, stack: AsyncExitStack) -> tuple[SharedStore, object]:
    """The limiter's store and, with Redis, its client (the key locks share it)."""
    if not settings.rate_limit_backend:
        return LocalStore(), None
    from kms_policy_service.ratelimit.redis_store import RedisStore  # only when configured

    store = RedisStore(
        settings.rate_limit_backend, fallback_fraction=settings.rate_limit_fallback_fraction
    )
    stack.push_async_callback(store.close)
    return store, store.client
