"""The `kms-policy-service` command: flags and KMS_POLICY_* environment -> Settings -> serve.

Every flag also reads the environment variable KMS_POLICY_<FLAG> (dashes as
underscores, upper case); a flag on the command line wins.

Exit codes: 0 clean stop, 2 bad configuration, 3 could not start (KMS, port).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kms_policy_service import settings as defaults
from kms_policy_service.accounts import parse_account_roles
from kms_policy_service.authz import AuthzPolicyError
from kms_policy_service.logs import configure as configure_logging
from kms_policy_service.ratelimit import DEFAULT_OPERATION_RATES, Rate
from kms_policy_service.settings import Settings, SettingsError
from kms_policy_service.validation.guardrails import GuardrailsError

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STARTUP = 3
ENV_PREFIX = "KMS_POLICY_"

log = logging.getLogger("kms_policy_service")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _operation_rates(values: list[str]) -> dict[str, Rate]:
    """OPERATION=RATE[:BURST] items (repeated flags, or comma-separated in the env)."""
    rates = dict(DEFAULT_OPERATION_RATES)
    for item in (v.strip() for value in values for v in value.split(",")):
        if not item:
            continue
        operation, sep, rate = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not OPERATION=RATE[:BURST]")
        rates[operation.strip()] = Rate.parse(rate)
    return rates


def _optional_rate(value: str) -> Rate | None:
    return None if value.strip().lower() in ("", "0", "off", "none") else Rate.parse(value)


def _networks(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(v.strip(), strict=False)
        for value in values
        for v in value.split(",")
        if v.strip()
    )


def _regions(value: str) -> frozenset[str]:
    return frozenset(r.strip() for r in value.split(",") if r.strip())


@dataclass(frozen=True)
class Option:
    flag: str
    field: str
    help: str
    parse: Callable[[Any], Any] = str
    is_switch: bool = False
    repeatable: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "--listen", "listen", f"gRPC listen address HOST:PORT (default {defaults.DEFAULT_LISTEN})"
    ),
    Option(
        "--region", "region", "home AWS Region (default: AWS_REGION, AWS_DEFAULT_REGION, us-east-1)"
    ),
    Option(
        "--allowed-regions", "allowed_regions", "other Regions served, comma-separated", _regions
    ),
    Option(
        "--local-kms",
        "local_kms",
        "run an embedded KMS emulator (moto) with a demo key",
        _bool,
        True,
    ),
    Option(
        "--kms-endpoint-url",
        "kms_endpoint_url",
        "KMS endpoint (default: AWS SDK resolution, AWS_ENDPOINT_URL_KMS)",
    ),
    Option(
        "--sts-endpoint-url",
        "sts_endpoint_url",
        "STS endpoint (default: AWS SDK resolution, AWS_ENDPOINT_URL_STS)",
    ),
    Option("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR (default INFO)", str.upper),
    Option("--log-format", "log_format", "json or text (default json)"),
    Option(
        "--shutdown-grace",
        "shutdown_grace",
        "seconds in-flight calls get on SIGTERM (default 10)",
        float,
    ),
    Option("--kms-connect-timeout", "kms_connect_timeout", "seconds (default 2)", float),
    Option("--kms-read-timeout", "kms_read_timeout", "seconds (default 5)", float),
    Option(
        "--kms-max-pool-connections",
        "kms_max_pool_connections",
        "HTTP connections to KMS (default 256)",
        int,
    ),
    Option(
        "--key-cache-ttl",
        "key_cache_ttl",
        "seconds a key resolution is cached; 0 disables (default 30)",
        float,
    ),
    Option(
        "--default-deadline",
        "default_deadline",
        "seconds for calls without a gRPC deadline (default 10)",
        float,
    ),
    Option(
        "--retry-max-attempts",
        "retry_max_attempts",
        "KMS attempts per call, retries included (default 3)",
        int,
    ),
    Option(
        "--kms-rate-limit",
        "kms_rate_limits",
        "OPERATION=RATE[:BURST] per KMS operation, repeatable (defaults PutKeyPolicy=5:5, "
        "GetKeyPolicy=200:200, ListKeyPolicies=20:20, DescribeKey=200:200)",
        _operation_rates,
        repeatable=True,
    ),
    Option(
        "--caller-rate-limit",
        "caller_rate_limit",
        "RATE[:BURST] per caller, on top of the operation limits (default off)",
        _optional_rate,
    ),
    Option(
        "--account-rate-limit",
        "account_rate_limit",
        "RATE[:BURST] of KMS calls per account and Region, every operation together, so one "
        "account's callers cannot spend another's KMS quota (default off)",
        _optional_rate,
    ),
    Option(
        "--key-write-rate-limit",
        "key_write_rate_limit",
        "RATE[:BURST] of PutKeyPolicy per key (default 1:1; off disables)",
        _optional_rate,
    ),
    Option(
        "--max-queue-wait",
        "max_queue_wait",
        "seconds a call may wait for a token (default 2)",
        float,
    ),
    Option("--max-concurrency", "max_concurrency", "KMS calls in flight (default 256)", int),
    Option(
        "--max-waiters",
        "max_waiters",
        "calls queued for a token or a KMS slot before shedding (default 256)",
        int,
    ),
    Option(
        "--max-concurrent-rpcs",
        "max_concurrent_rpcs",
        "RPCs handled at once; beyond, gRPC answers RESOURCE_EXHAUSTED (default 1024)",
        int,
    ),
    Option(
        "--max-rpcs-per-caller",
        "max_rpcs_per_caller",
        "RPCs one caller (identity, else address) may have in progress at once; beyond, "
        "RESOURCE_EXHAUSTED (default 512)",
        int,
    ),
    Option(
        "--lock-lease",
        "lock_lease",
        "seconds a shared (Redis) key-write lock lasts unless renewed; renewed every third "
        "of it while the write runs (default 10)",
        float,
    ),
    Option(
        "--max-lock-wait",
        "max_lock_wait",
        "seconds a Put waits for another write to the same key; then ABORTED "
        "KEY_WRITE_IN_PROGRESS (default 5)",
        float,
    ),
    Option(
        "--max-findings",
        "max_findings",
        "findings in one ValidateKeyPolicy answer; the last then says how many were left out "
        "(default 100)",
        int,
    ),
    Option(
        "--request-receive-timeout",
        "request_receive_timeout",
        "seconds a call's request message may take to arrive after its headers (default 5)",
        float,
    ),
    Option(
        "--caller-rpc-rate-limit",
        "caller_rpc_rate_limit",
        "RATE[:BURST] of RPCs per caller, whatever they cost (default off)",
        _optional_rate,
    ),
    Option(
        "--caller-refusal-rate-limit",
        "caller_refusal_rate_limit",
        "RATE[:BURST] of refused RPCs (invalid, unauthenticated, denied) per caller; past it "
        "every RPC of that caller is refused until the bucket refills (default 10:50; off "
        "disables)",
        _optional_rate,
    ),
    Option(
        "--max-deadline",
        "max_deadline",
        "seconds; longer caller deadlines are cut to this (default 30)",
        float,
    ),
    Option(
        "--max-streams-per-connection",
        "max_streams_per_connection",
        "concurrent HTTP/2 streams per client connection (default 512)",
        int,
    ),
    Option(
        "--max-connections",
        "max_connections",
        "client connections open at once; beyond, new ones are closed (default 1024)",
        int,
    ),
    Option(
        "--handshake-timeout",
        "handshake_timeout",
        "seconds a new connection has for its TLS and HTTP/2 handshake (default 5)",
        float,
    ),
    Option(
        "--max-connection-idle",
        "max_connection_idle",
        "seconds a connection without calls stays open (default 300)",
        float,
    ),
    Option(
        "--max-connection-age",
        "max_connection_age",
        "seconds before a connection is asked to reconnect with GOAWAY (default 1800)",
        float,
    ),
    Option(
        "--max-connection-age-grace",
        "max_connection_age_grace",
        "seconds calls in progress get after GOAWAY before the connection closes (default 35)",
        float,
    ),
    Option(
        "--rate-limit-backend",
        "rate_limit_backend",
        "redis://HOST:PORT/DB: share operation and key buckets across replicas (default in memory)",
    ),
    Option(
        "--rate-limit-fallback-fraction",
        "rate_limit_fallback_fraction",
        "fraction of each shared rate used locally while Redis is down (default 0.5)",
        float,
    ),
    Option(
        "--tls-cert",
        "tls_cert",
        "PEM certificate (chain) for the gRPC listener; reloaded on change",
    ),
    Option("--tls-key", "tls_key", "PEM private key for --tls-cert"),
    Option(
        "--tls-client-ca",
        "tls_client_ca",
        "PEM CA bundle: require client certificates it signed (mutual TLS)",
    ),
    Option(
        "--trusted-proxy",
        "trusted_proxies",
        "CIDR whose x-forwarded-client-cert header is believed, repeatable (default none)",
        _networks,
        repeatable=True,
    ),
    Option(
        "--insecure",
        "insecure",
        "allow a non-loopback listener without TLS or without an authz policy",
        _bool,
        True,
    ),
    Option(
        "--authz-policy",
        "authz_policy",
        "YAML/JSON authorization rules; reloaded on change or SIGHUP (default: allow all, "
        "loopback only)",
    ),
    Option(
        "--guardrails",
        "guardrails",
        "YAML/JSON guardrails: what no key policy written through the service may contain; "
        "reloaded on change or SIGHUP (default: none)",
    ),
    Option(
        "--authz-reload-interval",
        "authz_reload_interval",
        "seconds between checks of the authz and guardrails files for changes (default 2)",
        float,
    ),
    Option(
        "--audit-log",
        "audit_log",
        "JSON-lines audit trail of policy changes: a path, or - for stdout",
    ),
    Option(
        "--audit-omit-policies",
        "audit_omit_policies",
        "leave the previous/new policy text out of audit records",
        _bool,
        True,
    ),
    Option(
        "--audit-refusal-rate",
        "audit_refusal_rate",
        "RATE[:BURST] of refused-attempt audit records per caller; the rest are counted in a "
        "later summary record (default 1:10; off disables)",
        _optional_rate,
    ),
    Option(
        "--audit-refusal-total-rate",
        "audit_refusal_total_rate",
        "RATE[:BURST] of refused-attempt audit records from all callers together "
        "(default 20:100; off disables)",
        _optional_rate,
    ),
    Option(
        "--audit-refusal-callers",
        "audit_refusal_callers",
        "callers whose refusal-record bucket is remembered, least recent forgotten (default 10000)",
        int,
    ),
    Option(
        "--audit-unauthorized-policy-bytes",
        "audit_unauthorized_policy_bytes",
        "bytes of an attempted policy kept in the record when the caller was not authorized "
        "to write, with its length and SHA-256 (default 1024)",
        int,
    ),
    Option(
        "--metrics-listen", "metrics_listen", "HOST:PORT serving Prometheus /metrics (default off)"
    ),
    Option(
        "--health-listen",
        "health_listen",
        "HOST:PORT serving only grpc.health.v1, for kubelet probes on the pod IP (default off)",
    ),
    Option(
        "--health-max-connections",
        "health_max_connections",
        "connections the --health-listen listener holds at once, also its RPCs at once "
        "(default 256)",
        int,
    ),
    Option(
        "--metrics-max-connections",
        "metrics_max_connections",
        "connections the --metrics-listen listener serves at once; more are closed (default 64)",
        int,
    ),
    Option(
        "--metrics-request-timeout",
        "metrics_request_timeout",
        "seconds a --metrics-listen connection may sit idle in a read or write (default 10)",
        float,
    ),
    Option(
        "--kms-canary-key",
        "kms_canary_key",
        "key to DescribeKey periodically; reported as health service "
        "kmspolicy.v1.PolicyService/kms (default off)",
    ),
    Option(
        "--account-role",
        "account_roles",
        "ACCOUNT=ROLE_ARN, repeatable (comma-separated in the environment): manage the keys "
        "of ACCOUNT with credentials from STS AssumeRole of ROLE_ARN (default none)",
        parse_account_roles,
        repeatable=True,
    ),
    Option(
        "--assume-role-external-id",
        "assume_role_external_id",
        "sts:ExternalId sent with every AssumeRole of an --account-role (default none)",
    ),
    Option(
        "--caller-session-tags",
        "caller_session_tags",
        "assume member roles once per caller, with session tag kms-policy-service:caller = "
        "the caller's identity (default off: one session per account)",
        _bool,
        is_switch=True,
    ),
    Option(
        "--max-caller-sessions",
        "max_caller_sessions",
        f"assumed-role sessions kept with --caller-session-tags, least recently used go "
        f"(default {defaults.DEFAULT_MAX_CALLER_SESSIONS})",
        int,
    ),
    Option(
        "--kms-canary-interval",
        "kms_canary_interval",
        "seconds between canary checks (default 30)",
        float,
    ),
    Option(
        "--read-cache-ttl",
        "read_cache_ttl",
        "seconds GetKeyPolicy results are cached; 0 disables (default 0)",
        float,
    ),
    Option(
        "--read-coalescing-window",
        "read_coalescing_window",
        f"seconds a hot key's GetKeyPolicy waits for concurrent identical reads to join it "
        f"(one KMS call for all); 0 disables, at most "
        f"{defaults.MAX_READ_COALESCING_WINDOW_SECONDS} "
        f"(default {defaults.DEFAULT_READ_COALESCING_WINDOW_SECONDS})",
        float,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kms-policy-service",
        description="gRPC service fronting the AWS KMS key-policy operations.",
        epilog="Every flag also reads KMS_POLICY_<FLAG>, e.g. KMS_POLICY_LISTEN.",
    )
    for opt in OPTIONS:
        if opt.repeatable:
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                action="append",
                metavar="VALUE",
                help=f"{opt.help} [{opt.env}]",
            )
        elif opt.is_switch:
            parser.add_argument(
                opt.flag,
                dest=opt.field,
                action="store_const",
                const="true",
                help=f"{opt.help} [{opt.env}]",
            )
        else:
            parser.add_argument(
                opt.flag, dest=opt.field, metavar=opt.field.upper(), help=f"{opt.help} [{opt.env}]"
            )
    return parser


def settings_from(argv: Sequence[str] | None, environ: dict[str, str]) -> Settings:
    """Flags over KMS_POLICY_* over AWS_REGION/AWS_DEFAULT_REGION over defaults."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        values["region"] = region
    for opt in OPTIONS:
        raw = args.get(opt.field)
        source = opt.flag
        if raw is None:
            raw, source = environ.get(opt.env), opt.env
            if raw is not None and opt.repeatable:
                raw = [raw]
        if raw is None:
            continue
        try:
            values[opt.field] = opt.parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{source}: {exc}") from exc
    return Settings(**values)


def run(settings: Settings) -> int:
    from kms_policy_service.server import Server

    async def main() -> None:
        await Server(settings).serve()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a default dependency
        runner: Callable[[Any], Any] = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(main())
    except AuthzPolicyError as exc:
        log.error("bad authorization policy: %s", exc)
        return EXIT_CONFIG
    except GuardrailsError as exc:
        log.error("bad guardrails: %s", exc)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("could not start: %s", exc)
        return EXIT_STARTUP
    except Exception as exc:
        log.error("could not start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return EXIT_STARTUP
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = settings_from(argv, dict(os.environ))
    except SettingsError as exc:
        print(f"kms-policy-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    return run(settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
