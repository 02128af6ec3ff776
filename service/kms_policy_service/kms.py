"""The aiobotocore KMS backend: the only module that imports aiobotocore or botocore.

One client per Region (the home Region plus any allow-listed ones) and one STS
client, created at start and closed at shutdown; botocore failures become
backend.KmsFailure with KMS's error code or one of errors' transport pseudo-codes.

A member account's keys (accounts.AccountRoles) get their own clients, per
(account, Region), created on first use and closed at shutdown, signed with
credentials from STS AssumeRole of the account's role, chained from the service's
own. Those are botocore's refreshable credentials (AioAssumeRoleCredentialFetcher
behind AioDeferredRefreshableCredentials): nothing is assumed until first use,
concurrent first uses wait on one AssumeRole, and the session is renewed in
botocore's advisory window (15 minutes before expiry, by one caller while the others
keep the current session) or, failing that, its mandatory one (10 minutes). A role
that cannot be assumed fails only its account's calls, and works again by itself.
With caller session tags there is one session per (account, caller), in a bounded
LRU, tagged with the caller's identity.
"""

from __future__ import annotations

# isort: off
# First, before aiobotocore imports it: aiohttp without its two unused SSL contexts.
from kms_policy_service._lean_aiohttp import aiohttp
# isort: on

import asyncio
import functools
import json
import logging
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore
from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioCredentialResolver,
    AioCredentials,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore.context import get_context
from botocore.credentials import CredentialProvider
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from kms_policy_service import metrics
from kms_policy_service._version import __version__
from kms_policy_service.accounts import (
    CALLER_TAG,
    SESSION_NAME,
    AccountRoles,
    session_tag_value,
)
from kms_policy_service.backend import (
    ASSUME_ROLE,
    CallerIdentity,
    KeyMetadata,
    KmsFailure,
    PolicyPage,
)
from kms_policy_service.errors import CONNECTION_ERROR, CREDENTIALS_MISSING, READ_TIMEOUT

log = logging.getLogger(__name__)
DEFAULT_MAX_CALLER_SESSIONS = 256


@contextmanager
def _translate(operation: str | None = None) -> Iterator[None]:
    """Turn every botocore/aiohttp failure into a KmsFailure (raise ... from exc).

    `operation` names a call made on the way (AssumeRole) rather than the KMS call.
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = error.get("Code") or ""
        if not code or code == str(status):
            code = _header_error_code(meta.get("HTTPHeaders", {})) or code
        code = code or (f"HTTP{status}" if status else "Unknown")
        raise KmsFailure(
            code, error.get("Message", ""), http_status=status, operation=operation
        ) from exc
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        raise KmsFailure(READ_TIMEOUT, type(exc).__name__, operation=operation) from exc
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
        raise KmsFailure(CREDENTIALS_MISSING, type(exc).__name__, operation=operation) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        # Endpoint unreachable, connection reset or dropped mid-response.
        raise KmsFailure(CONNECTION_ERROR, type(exc).__name__, operation=operation) from exc


def _header_error_code(headers: Mapping[str, Any]) -> str:
    """The code in X-Amzn-ErrorType (`Code:namespace`), or "".

    botocore reads the JSON protocol's code only from the body's `__type`; without
    one it reports the HTTP status as the code. AWS's front end names some refusals
    it makes itself (signature, credentials, clock) in this header alone.
    """
    for name, value in headers.items():
        if name.lower() == "x-amzn-errortype":
            return str(value).split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return ""


@dataclass(frozen=True)
class ClientConfig:
    """What the KMS and STS clients need to know (built from Settings by the lifecycle)."""

    region: str
    regions: frozenset[str]  # every Region served: the home Region and the allowed ones
    kms_endpoint_url: str | None = None  # None: the AWS SDK's own resolution
    sts_endpoint_url: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_pool_connections: int = 64
    accounts: AccountRoles = field(default_factory=AccountRoles)
    max_caller_sessions: int = DEFAULT_MAX_CALLER_SESSIONS  # with caller session tags


class _SharedTlsSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore's HTTP session, with one TLS context for every client that verifies alike.

    aiobotocore builds an SSLContext per client, loading the CA bundle each time (~0.7 MB
    and ~13 ms of CPU): the service makes a client per Region, one for STS, one per
    member account and Region, one per caller session with --caller-session-tags (up to
    --max-caller-sessions), and an STS client per AssumeRole. A context holds settings
    and CA certificates, no credentials; contexts with a client certificate or a proxy
    are built per client, as before. A CA bundle file is known by its identity (inode,
    size, mtime): a bundle rewritten in place is loaded again by the next client made.
    This overrides aiobotocore's `_build_ssl_contexts` (3.x); where a version lacks it,
    every client builds its own context, as aiobotocore does (tests/unit/test_kms.py).
    """

    def _build_ssl_contexts(
        self, proxy_url: str | None
    ) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
        if self._cert_file or proxy_url:
            return super()._build_ssl_contexts(proxy_url)  # type: ignore[no-any-return]
        key = _verify_key(self._verify)  # True, False or a CA bundle (AWS_CA_BUNDLE)
        with _TLS_LOCK:  # built in a worker thread (aiobotocore keeps file reads off the loop)
            found = _TLS_CONTEXTS.get(key)
        if found is None:
            found = self._build_verify_context()  # outside the lock: two may build, one stays
            with _TLS_LOCK:
                if len(_TLS_CONTEXTS) < MAX_TLS_CONTEXTS:
                    found = _TLS_CONTEXTS.setdefault(key, found)
        return found, None


def _verify_key(verify: object) -> object:
    if isinstance(verify, str):
        try:
            stat = os.stat(verify)
        except OSError:
            return verify  # aiobotocore's own load will report it
        return (verify, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return verify


MAX_TLS_CONTEXTS = 8  # distinct verify settings (in practice one)
_TLS_CONTEXTS: dict[object, ssl.SSLContext] = {}
_TLS_LOCK = threading.Lock()


def client_config(settings: ClientConfig) -> AioConfig:
    # The service owns its retry loop (deadlines, rate-limit tokens): botocore makes
    # exactly one attempt. Timeouts far below botocore's 60 s defaults.
    return AioConfig(
        http_session_cls=_SharedTlsSession,
        retries={"mode": "standard", "total_max_attempts": 1},
        # Names the service in CloudTrail's userAgent, so auditors can tell its calls apart.
        user_agent_appid=f"kms-policy-service/{__version__}",
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_pool_connections,
    )


MAX_USER_AGENTS = 64  # distinct feature sets remembered per client (in practice: a few)


class _CachedUserAgent:
    """botocore's User-Agent for a client, built once per set of features.

    botocore assembles and sanitizes the header twice per request (a dozen components,
    a regex each); everything in it but the request's feature ids is fixed when the
    client is made, so the string is kept per feature set: the same header, byte for
    byte, without the work.
    """

    def __init__(self, creator: Any) -> None:
        self._creator = creator
        self._built: dict[frozenset[str], str] = {}

    def to_string(self) -> str:
        ctx = get_context()
        features = frozenset(ctx.features) if ctx is not None else frozenset()
        found = self._built.get(features)
        if found is None:
            found = self._creator.to_string()
            if len(self._built) < MAX_USER_AGENTS:
                self._built[features] = found
        return str(found)

    def rebuild_and_replace_user_agent_handler(
        self, operation_name: str, request: Any, **kwargs: Any
    ) -> None:
        if request.headers.get("User-Agent"):
            request.headers.replace_header("User-Agent", self.to_string())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._creator, name)


def _lighten(client: Any) -> Any:
    """Per-request work a client does not need to repeat: the User-Agent, built once."""
    creator = getattr(client, "_user_agent_creator", None)
    if creator is None or isinstance(creator, _CachedUserAgent):
        return client
    cached = _CachedUserAgent(creator)
    event = f"request-created.{client.meta.service_model.service_id.hyphenize()}"
    client.meta.events.unregister(event, creator.rebuild_and_replace_user_agent_handler)
    client.meta.events.register_last(event, cached.rebuild_and_replace_user_agent_handler)
    client._user_agent_creator = cached
    return client


SERVICES = ("kms", "sts")  # every client the service makes


def _slim_models(session: AioSession) -> None:
    """Keep of botocore's data only what KMS and STS clients use (a sidecar pays it per pod).

    Its endpoint data (endpoints.json, ~7 MB once parsed) lists every AWS service; the
    service models carry their API documentation. Both are cached by the session's
    loader, so pruning them in place before the first client leaves ~2 MB instead of ~9.
    """
    loader = session.get_component("data_loader")
    data = loader.load_data("endpoints")
    for partition in data.get("partitions", []):
        services = partition.get("services", {})
        partition["services"] = {name: services[name] for name in SERVICES if name in services}
    for name in SERVICES:
        _drop_docs(loader.load_service_model(name, "service-2"))


SDK_DATA_MARKER = "kms-policy-service-sdk-data.json"


def write_sdk_data(directory: Path) -> None:
    """Write botocore's data for KMS and STS, pruned as at start, for AWS_DATA_PATH.

    botocore's loader reads a file from an AWS_DATA_PATH directory before its own copy.
    With this one, a start parses 19 KB of endpoint data instead of 1.3 MB and two
    models without their documentation; the big parse's garbage also stayed resident
    (measured: idle RSS 71.6 -> 66.5 MB). The image writes it at build time, from the
    botocore it installs; the marker names that version, and a start with data from
    another version logs a warning.
    """
    session = get_session()
    _slim_models(session)
    loader = session.get_component("data_loader")
    _write_json(directory / "endpoints.json", loader.load_data("endpoints"))
    for name in SERVICES:
        version = loader.determine_latest_version(name, "service-2")
        model = loader.load_service_model(name, "service-2", version)
        _write_json(directory / name / version / "service-2.json", model)
    _write_json(directory / SDK_DATA_MARKER, {"botocore": botocore.__version__})


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")))


def _check_sdk_data() -> None:
    """Warn when AWS_DATA_PATH holds pruned data written by another botocore version."""
    for entry in filter(None, os.environ.get("AWS_DATA_PATH", "").split(os.pathsep)):
        marker = Path(entry).expanduser() / SDK_DATA_MARKER
        try:
            written = json.loads(marker.read_text()).get("botocore")
        except (OSError, ValueError, AttributeError):
            continue
        if written != botocore.__version__:
            log.warning(
                "SDK data in %s was written by botocore %s, this is %s: write it again "
                "(python -m kms_policy_service.sdk_data DIR)",
                entry,
                written,
                botocore.__version__,
            )


def _drop_docs(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("documentation", None)
        node.pop("documentationUrl", None)
        for value in node.values():
            _drop_docs(value)
    elif isinstance(node, list):
        for value in node:
            _drop_docs(value)


class _Given(CredentialProvider):  # type: ignore[misc]
    """A session's credential chain of one: the member account's refreshable credentials."""

    METHOD = "assume-role"

    def __init__(self, credentials: Any) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> Any:
        return self._credentials


class _RoleSession:
    """One assumed-role session (per account, or per account and caller): its
    refreshable credentials and its KMS clients, one per Region, made on first use."""

    def __init__(self, session: AioSession, account: str, config: ClientConfig) -> None:
        self._session = session
        self._config = config
        self.account = account
        self.clients: dict[str, Any] = {}
        self.stack = AsyncExitStack()
        self.users = 0
        self.evicted = False
        self._lock = asyncio.Lock()

    async def client(self, region: str) -> Any:
        found = self.clients.get(region)
        if found is None:
            async with self._lock:  # concurrent first uses make one client
                found = self.clients.get(region)
                if found is None:
                    found = self.clients[region] = _lighten(
                        await self.stack.enter_async_context(
                            self._session.create_client(
                                "kms",
                                region_name=region,
                                endpoint_url=self._config.kms_endpoint_url,
                                config=client_config(self._config),
                            )
                        )
                    )
        return found


class AioKmsBackend:
    """KMS over HTTP through aiobotocore."""

    def __init__(
        self,
        clients: dict[str, Any],
        sts: Any,
        *,
        session: AioSession | None = None,
        config: ClientConfig | None = None,
        source_credentials: Any = None,
    ) -> None:
        self._clients = clients
        self._sts = sts
        self._session = session
        self._config = config
        self._accounts = config.accounts if config is not None else AccountRoles()
        self._source = source_credentials
        self._sessions: OrderedDict[tuple[str, str], _RoleSession] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        for account in self._accounts.roles:
            # Bounded labels: the accounts come from configuration. -1: not assumed yet.
            metrics.child(metrics.account_credentials, account).set(-1)

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: ClientConfig,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> AsyncIterator[AioKmsBackend]:
        """Create the clients; close them (and their connection pools) on exit.

        Without `credentials` the default AWS credential chain applies (env, profile,
        IRSA web identity, EKS Pod Identity, instance role); they are never logged.
        """
        _check_sdk_data()
        session = get_session()
        _slim_models(session)
        config = client_config(settings)
        extra: dict[str, Any] = {}
        if credentials is not None:
            extra = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
        async with AsyncExitStack() as stack:
            clients: dict[str, Any] = {}
            for region in sorted({settings.region, *settings.regions}):
                clients[region] = _lighten(
                    await stack.enter_async_context(
                        session.create_client(
                            "kms",
                            region_name=region,
                            endpoint_url=settings.kms_endpoint_url,
                            config=config,
                            **extra,
                        )
                    )
                )
            sts = await stack.enter_async_context(
                session.create_client(
                    "sts",
                    region_name=settings.region,
                    endpoint_url=settings.sts_endpoint_url,
                    config=config,
                    **extra,
                )
            )
            source = None
            if settings.accounts.roles:
                # The member roles are assumed with the service's own credentials.
                source = (
                    AioCredentials(*credentials)
                    if credentials is not None
                    else await session.get_credentials()
                )
            backend = cls(clients, sts, session=session, config=settings, source_credentials=source)
            stack.push_async_callback(backend._close_sessions)
            yield backend

    # -- choosing the client ----------------------------------------------------

    @asynccontextmanager
    async def _client(self, key_id: str, region: str, caller: str) -> AsyncIterator[Any]:
        """The home client for `region`, or the member account's for a member account's key."""
        member = self._accounts.role_for(key_id)
        if member is None:
            yield self._clients[region]
            return
        account, role = member
        session = self._role_session(account, role, caller)
        session.users += 1
        try:
            yield await session.client(region)
        finally:
            session.users -= 1
            if session.evicted and not session.users:
                self._close_later(session)

    def _role_session(self, account: str, role: str, caller: str) -> _RoleSession:
        tagged = self._accounts.caller_session_tags
        if tagged:
            refused = session_tag_value(caller)
            if refused:
                raise KmsFailure(
                    refused, "the caller's identity cannot be a session tag", operation=ASSUME_ROLE
                )
        key = (account, caller if tagged else "")
        found = self._sessions.get(key)
        if found is not None:
            self._sessions.move_to_end(key)
            return found
        found = self._sessions[key] = self._new_session(account, role, caller if tagged else "")
        assert self._config is not None
        while tagged and len(self._sessions) > self._config.max_caller_sessions:
            _, old = self._sessions.popitem(last=False)
            old.evicted = True
            metrics.caller_sessions_evicted_total.inc()
            if not old.users:
                self._close_later(old)
        return found

    def _new_session(self, account: str, role: str, caller: str) -> _RoleSession:
        assert self._session is not None and self._config is not None
        extra: dict[str, Any] = {"RoleSessionName": SESSION_NAME}
        if self._accounts.external_id:
            extra["ExternalId"] = self._accounts.external_id
        if caller:
            # The member account's CloudTrail shows it (AssumeRole), and its policies can
            # condition on aws:PrincipalTag/kms-policy-service:caller.
            extra["Tags"] = [{"Key": CALLER_TAG, "Value": caller}]
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=functools.partial(
                self._session.create_client,
                region_name=self._config.region,
                endpoint_url=self._config.sts_endpoint_url,
                config=client_config(self._config),
            ),
            source_credentials=self._source,
            role_arn=role,
            extra_args=extra,
        )

        async def assume() -> Any:
            gauge = metrics.child(metrics.account_credentials, account)
            try:
                if self._source is None:
                    raise KmsFailure(CREDENTIALS_MISSING, "no source", operation=ASSUME_ROLE)
                with _translate(ASSUME_ROLE):
                    fresh = await fetcher.fetch_credentials()
            except KmsFailure as failure:
                gauge.set(0)
                metrics.child(metrics.assume_role_total, account, "failed").inc()
                log.warning(
                    "AssumeRole of %s failed: %s", role, failure.code, extra={"account": account}
                )
                raise
            gauge.set(1)
            metrics.child(metrics.assume_role_total, account, "ok").inc()
            return fresh

        credentials = AioDeferredRefreshableCredentials(refresh_using=assume, method="assume-role")
        session = AioSession()
        # Models parsed once for every session; credentials: this role's, nothing else.
        session.register_component("data_loader", self._session.get_component("data_loader"))
        session.register_component(
            "credential_provider", AioCredentialResolver([_Given(credentials)])
        )
        return _RoleSession(session, account, self._config)

    def _close_later(self, session: _RoleSession) -> None:
        task = asyncio.get_running_loop().create_task(session.stack.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_sessions(self) -> None:
        for session in self._sessions.values():
            await session.stack.aclose()
        self._sessions.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- the operations -----------------------------------------------------------

    async def _call(
        self, key_id: str, region: str, caller: str, call: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        """`call(client)` on the client for the key's account, failures translated.

        The home account's keys skip the member-session bookkeeping (no context manager
        per request): they are nearly every call.
        """
        if not self._accounts.roles or self._accounts.role_for(key_id) is None:
            client = self._clients[region]
            with _translate():
                return await call(client)
        async with self._client(key_id, region, caller) as client:
            with _translate():
                return await call(client)

    async def describe_key(self, key_id: str, *, region: str, caller: str = "") -> KeyMetadata:
        response = await self._call(
            key_id, region, caller, lambda client: client.describe_key(KeyId=key_id)
        )
        meta = response["KeyMetadata"]
        return KeyMetadata(
            arn=meta["Arn"],
            key_id=meta["KeyId"],
            key_manager=meta.get("KeyManager", "CUSTOMER"),
            key_state=meta.get("KeyState", ""),
        )

    async def get_key_policy(
        self, key_arn: str, policy_name: str, *, region: str, caller: str = ""
    ) -> str:
        response = await self._call(
            key_arn,
            region,
            caller,
            lambda client: client.get_key_policy(KeyId=key_arn, PolicyName=policy_name),
        )
        return str(response["Policy"])

    async def put_key_policy(
        self,
        key_arn: str,
        policy_name: str,
        policy: str,
        *,
        bypass_lockout_check: bool,
        region: str,
        caller: str = "",
    ) -> None:
        await self._call(
            key_arn,
            region,
            caller,
            lambda client: client.put_key_policy(
                KeyId=key_arn,
                PolicyName=policy_name,  # always explicit: moto and older SDKs need it
                Policy=policy,
                BypassPolicyLockoutSafetyCheck=bypass_lockout_check,
            ),
        )

    async def list_key_policies(
        self,
        key_arn: str,
        *,
        limit: int | None,
        marker: str | None,
        region: str,
        caller: str = "",
    ) -> PolicyPage:
        params: dict[str, Any] = {"KeyId": key_arn}
        if limit:
            params["Limit"] = limit
        if marker:
            params["Marker"] = marker
        response = await self._call(
            key_arn, region, caller, lambda client: client.list_key_policies(**params)
        )
        next_marker = response.get("NextMarker") if response.get("Truncated") else None
        return PolicyPage(tuple(response.get("PolicyNames", [])), next_marker)

    async def get_caller_identity(self) -> CallerIdentity:
        with _translate():
            response = await self._sts.get_caller_identity()
        return CallerIdentity(account=response["Account"], arn=response["Arn"])
