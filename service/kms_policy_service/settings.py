"""Settings: the service's configuration, built once at start, frozen, validated, no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from kms_policy_service.accounts import check_account_roles
from kms_policy_service.backend import Operation


@dataclass(frozen=True)
class Rate:
    """`rate` tokens per second, at most `burst` at once."""

    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate must be positive and its burst at least 1")

    @property
    def interval(self) -> float:
        return 1.0 / self.rate

    @classmethod
    def parse(cls, text: str) -> Rate:
        """RATE[:BURST], e.g. `5` or `5:10`; the burst defaults to max(1, RATE)."""
        rate_text, _, burst_text = text.partition(":")
        rate = float(rate_text)
        burst = int(burst_text) if burst_text else max(1, int(rate))
        return cls(rate, burst)

    def __str__(self) -> str:
        return f"{self.rate:g}/s burst {self.burst}"


# Well under the published KMS defaults (Put 15/s, Get 1000/s, List 100/s, Describe 2000/s),
# which every workload in the account shares.
DEFAULT_OPERATION_RATES: Mapping[str, Rate] = {
    Operation.PUT_KEY_POLICY: Rate(5, 5),
    Operation.GET_KEY_POLICY: Rate(200, 200),
    Operation.LIST_KEY_POLICIES: Rate(20, 20),
    Operation.DESCRIBE_KEY: Rate(200, 200),
}
# A hot key's reads wait this long for each other (one KMS call for all); bounded so
# that no configuration holds a read for long.
DEFAULT_READ_COALESCING_WINDOW_SECONDS = 0.003
MAX_READ_COALESCING_WINDOW_SECONDS = 0.05
DEFAULT_KEY_WRITE_RATE = Rate(1, 1)  # KMS throttles "hot keys" changed too often
DEFAULT_REFUSAL_RATE = Rate(1.0, 10)  # refused-attempt audit records per caller: 1/s, burst 10
DEFAULT_REFUSAL_TOTAL_RATE = Rate(20.0, 100)  # refused-attempt records from everyone together
DEFAULT_REFUSAL_CALLERS = 10_000  # callers whose refusal bucket is tracked (least recent go)
DEFAULT_UNAUTHORIZED_POLICY_BYTES = 1024  # of a policy kept for a caller not authorized to write

# Named defaults, with their units.
DEFAULT_LISTEN = "127.0.0.1:50051"  # loopback: safe for sidecar mode
DEFAULT_REGION = "us-east-1"
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10.0
DEFAULT_KMS_CONNECT_TIMEOUT_SECONDS = 2.0
DEFAULT_KMS_READ_TIMEOUT_SECONDS = 5.0
DEFAULT_KMS_MAX_POOL_CONNECTIONS = 256  # one per KMS call in flight (--max-concurrency)
DEFAULT_KEY_CACHE_TTL_SECONDS = 30.0
DEFAULT_KEY_CACHE_MAX_ENTRIES = 10_000
DEFAULT_DEADLINE_SECONDS = 10.0  # for calls that bring no gRPC deadline
DEFAULT_DEADLINE_MARGIN_SECONDS = 0.02  # kept back to answer before the caller gives up
DEFAULT_RETRY_MAX_ATTEMPTS = 3
DEFAULT_RETRY_BASE_SECONDS = 0.05
DEFAULT_RETRY_CAP_SECONDS = 1.0
# A valid request carries at most a 32 KiB policy (plus short fields): refuse much larger
# messages in gRPC itself, before any parsing.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_QUEUE_WAIT_SECONDS = 2.0
# KMS calls in flight; matches the connection pool. Waiting on a slow KMS costs no CPU, so
# the bound is for memory (a connection and a request each, ~tens of KB), not for work:
# at 64 a KMS answering in 50 ms capped the service at 64 / 0.05 s = 1,280 calls/s.
DEFAULT_MAX_CONCURRENCY = 256
DEFAULT_MAX_WAITERS = 256  # calls queued for a token or a connection, beyond which we shed
DEFAULT_MAX_CONCURRENT_RPCS = 1024  # RPCs gRPC accepts at once before answering RESOURCE_EXHAUSTED
DEFAULT_MAX_RPCS_PER_CALLER = 512  # half of --max-concurrent-rpcs: one caller never holds them all
DEFAULT_REQUEST_RECEIVE_TIMEOUT_SECONDS = 5.0  # for a request message to arrive after its headers
DEFAULT_CALLER_REFUSAL_RATE = Rate(10, 50)  # refused RPCs per caller before it is refused outright
DEFAULT_MAX_DEADLINE_SECONDS = 30.0  # longer caller deadlines are cut to this
DEFAULT_MAX_STREAMS_PER_CONNECTION = 512  # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS
DEFAULT_MAX_CONNECTIONS = 1024  # open client connections (~20 KB each before any call)
DEFAULT_HANDSHAKE_TIMEOUT_SECONDS = 5.0  # for a new connection's TLS and HTTP/2 handshake
DEFAULT_METRICS_MAX_CONNECTIONS = 64  # /metrics connections (one thread each) at once
DEFAULT_METRICS_REQUEST_TIMEOUT_SECONDS = 10.0  # a /metrics socket idle, per read or write
DEFAULT_HEALTH_MAX_CONNECTIONS = 256  # probe-listener connections (kubelet dials per probe)
DEFAULT_MAX_CONNECTION_IDLE_SECONDS = 300.0
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 1800.0  # then GOAWAY; clients reconnect transparently
DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS = 35.0  # > --max-deadline: calls in progress finish
DEFAULT_LOCK_LEASE_SECONDS = 10.0  # a dead replica's key lock expires after this
DEFAULT_MAX_LOCK_WAIT_SECONDS = 5.0  # for another write to the same key, then ABORTED
DEFAULT_MAX_FINDINGS = 100  # per ValidateKeyPolicy answer, then one TOO_MANY_FINDINGS
DEFAULT_FALLBACK_FRACTION = 0.5  # of each shared rate, per replica, while Redis is down
DEFAULT_CANARY_INTERVAL_SECONDS = 30.0
DEFAULT_AUTHZ_RELOAD_SECONDS = 2.0  # how often the authz file is checked for changes
DEFAULT_MAX_CALLER_SESSIONS = 256  # assumed-role sessions kept with --caller-session-tags (LRU)
KMS_OPERATIONS = tuple(Operation)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")


class SettingsError(ValueError):
    """A setting is invalid; the message says which and why."""


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    region: str = DEFAULT_REGION
    allowed_regions: frozenset[str] = field(default_factory=frozenset)
    local_kms: bool = False
    kms_endpoint_url: str | None = (
        None  # None: the AWS SDK's own resolution (AWS_ENDPOINT_URL_KMS...)
    )
    sts_endpoint_url: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    kms_connect_timeout: float = DEFAULT_KMS_CONNECT_TIMEOUT_SECONDS
    kms_read_timeout: float = DEFAULT_KMS_READ_TIMEOUT_SECONDS
    kms_max_pool_connections: int = DEFAULT_KMS_MAX_POOL_CONNECTIONS
    key_cache_ttl: float = DEFAULT_KEY_CACHE_TTL_SECONDS
    key_cache_max_entries: int = DEFAULT_KEY_CACHE_MAX_ENTRIES
    default_deadline: float = DEFAULT_DEADLINE_SECONDS
    deadline_margin: float = DEFAULT_DEADLINE_MARGIN_SECONDS
    retry_max_attempts: int = DEFAULT_RETRY_MAX_ATTEMPTS
    retry_base: float = DEFAULT_RETRY_BASE_SECONDS
    retry_cap: float = DEFAULT_RETRY_CAP_SECONDS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    kms_rate_limits: Mapping[str, Rate] = field(
        default_factory=lambda: dict(DEFAULT_OPERATION_RATES)
    )
    caller_rate_limit: Rate | None = None
    key_write_rate_limit: Rate | None = DEFAULT_KEY_WRITE_RATE
    max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT_SECONDS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_waiters: int = DEFAULT_MAX_WAITERS
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_rpcs_per_caller: int = DEFAULT_MAX_RPCS_PER_CALLER
    max_findings: int = DEFAULT_MAX_FINDINGS
    lock_lease: float = DEFAULT_LOCK_LEASE_SECONDS
    max_lock_wait: float = DEFAULT_MAX_LOCK_WAIT_SECONDS
    request_receive_timeout: float = DEFAULT_REQUEST_RECEIVE_TIMEOUT_SECONDS
    caller_rpc_rate_limit: Rate | None = None
    caller_refusal_rate_limit: Rate | None = DEFAULT_CALLER_REFUSAL_RATE
    max_deadline: float = DEFAULT_MAX_DEADLINE_SECONDS
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_SECONDS
    max_connection_idle: float = DEFAULT_MAX_CONNECTION_IDLE_SECONDS
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS
    max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS
    rate_limit_backend: str | None = None  # redis://HOST:PORT/DB; None: in memory
    rate_limit_fallback_fraction: float = DEFAULT_FALLBACK_FRACTION
    read_cache_ttl: float = 0.0  # seconds; 0: off
    read_coalescing_window: float = DEFAULT_READ_COALESCING_WINDOW_SECONDS  # 0: off
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: clients must present a certificate it signed
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    insecure: bool = False
    authz_policy: str | None = None
    authz_reload_interval: float = DEFAULT_AUTHZ_RELOAD_SECONDS
    guardrails: str | None = None  # a YAML/JSON file of what no key policy may contain
    audit_log: str | None = None  # a path, or "-" for stdout
    audit_omit_policies: bool = False
    audit_refusal_rate: Rate | None = DEFAULT_REFUSAL_RATE  # refused-attempt records per caller
    audit_refusal_total_rate: Rate | None = DEFAULT_REFUSAL_TOTAL_RATE  # ... from all callers
    audit_refusal_callers: int = DEFAULT_REFUSAL_CALLERS  # per-caller buckets kept (LRU)
    audit_unauthorized_policy_bytes: int = DEFAULT_UNAUTHORIZED_POLICY_BYTES
    metrics_listen: str | None = None  # HOST:PORT for /metrics; None: off
    health_listen: str | None = None  # HOST:PORT serving only grpc.health.v1
    health_max_connections: int = DEFAULT_HEALTH_MAX_CONNECTIONS
    metrics_max_connections: int = DEFAULT_METRICS_MAX_CONNECTIONS
    metrics_request_timeout: float = DEFAULT_METRICS_REQUEST_TIMEOUT_SECONDS
    kms_canary_key: str | None = None
    kms_canary_interval: float = DEFAULT_CANARY_INTERVAL_SECONDS
    # Member accounts: account -> the role assumed there (accounts.py)
    account_roles: Mapping[str, str] = field(default_factory=dict)
    assume_role_external_id: str | None = None
    caller_session_tags: bool = False  # one session per caller, tagged with its identity
    max_caller_sessions: int = DEFAULT_MAX_CALLER_SESSIONS
    account_rate_limit: Rate | None = None  # per account and Region, every KMS operation

    def __post_init__(self) -> None:
        host, _ = split_host_port(self.listen)
        if not host:
            raise SettingsError(f"--listen {self.listen!r}: a host is required")
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        for name in (
            "shutdown_grace",
            "kms_connect_timeout",
            "kms_read_timeout",
            "default_deadline",
            "retry_base",
            "retry_cap",
            "request_receive_timeout",
            "max_deadline",
            "lock_lease",
            "max_lock_wait",
            "max_connection_idle",
            "max_connection_age",
            "handshake_timeout",
            "metrics_request_timeout",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        if self.key_cache_ttl < 0 or self.deadline_margin < 0:
            raise SettingsError("key_cache_ttl and deadline_margin must not be negative")
        if self.retry_max_attempts < 1 or self.kms_max_pool_connections < 1:
            raise SettingsError("retry_max_attempts and kms_max_pool_connections must be >= 1")
        unknown = set(self.kms_rate_limits) - set(KMS_OPERATIONS)
        if unknown:
            raise SettingsError(
                f"--kms-rate-limit: unknown operation {sorted(unknown)[0]!r} "
                f"(one of {', '.join(KMS_OPERATIONS)})"
            )
        if self.max_queue_wait < 0 or self.read_cache_ttl < 0:
            raise SettingsError("max_queue_wait and read_cache_ttl must not be negative")
        if not 0 <= self.read_coalescing_window <= MAX_READ_COALESCING_WINDOW_SECONDS:
            raise SettingsError(
                f"read_coalescing_window must be between 0 and "
                f"{MAX_READ_COALESCING_WINDOW_SECONDS} s"
            )
        if self.max_concurrency < 1 or self.max_waiters < 0 or self.max_concurrent_rpcs < 1:
            raise SettingsError(
                "max_concurrency and max_concurrent_rpcs must be >= 1, max_waiters >= 0"
            )
        if self.max_findings < 1:
            raise SettingsError("max_findings must be >= 1")
        if self.max_rpcs_per_caller < 1:
            raise SettingsError("max_rpcs_per_caller must be >= 1")
        if min(self.max_connections, self.health_max_connections, self.metrics_max_connections) < 1:
            raise SettingsError(
                "max_connections, health_max_connections and metrics_max_connections must be >= 1"
            )
        if self.max_streams_per_connection < 1 or self.max_connection_age_grace < 0:
            raise SettingsError(
                "max_streams_per_connection must be >= 1, max_connection_age_grace >= 0"
            )
        if self.default_deadline > self.max_deadline:
            raise SettingsError("default_deadline must not exceed max_deadline")
        if not 0 < self.rate_limit_fallback_fraction <= 1:
            raise SettingsError("rate_limit_fallback_fraction must be in (0, 1]")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key")
        if not self.listen_is_loopback and not self.insecure:
            if not self.tls_cert:
                raise SettingsError(
                    f"--listen {self.listen} is not loopback: it needs --tls-cert/--tls-key "
                    "(or --insecure, which lets anyone on the network rewrite key policies)"
                )
            if not self.authz_policy:
                raise SettingsError(
                    f"--listen {self.listen} is not loopback: it needs --authz-policy "
                    "(or --insecure, which allows every caller everything)"
                )
        if self.audit_refusal_callers < 1 or self.audit_unauthorized_policy_bytes < 0:
            raise SettingsError(
                "audit_refusal_callers must be >= 1, audit_unauthorized_policy_bytes >= 0"
            )
        if self.authz_reload_interval <= 0 or self.kms_canary_interval <= 0:
            raise SettingsError("authz_reload_interval and kms_canary_interval must be positive")
        for name in ("metrics_listen", "health_listen"):
            address = getattr(self, name)
            if address is not None:
                split_host_port(address)
        try:
            check_account_roles(self.account_roles)
        except ValueError as exc:
            raise SettingsError(f"--account-role: {exc}") from exc
        if self.max_caller_sessions < 1:
            raise SettingsError("max_caller_sessions must be >= 1")
        if self.rate_limit_backend and not self.rate_limit_backend.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError("--rate-limit-backend must be a redis://, rediss:// or unix:// URL")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def listen_is_loopback(self) -> bool:
        host, _ = split_host_port(self.listen)
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def split_host_port(address: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); raise SettingsError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
