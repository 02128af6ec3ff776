"""Prometheus metrics, declared once, with bounded labels (no key ARNs, callers or messages).

Names follow what operators already chart: go-grpc-prometheus for the server side,
`kms_*` for the KMS client side (as the Kubernetes KMS plugins export).
"""

from __future__ import annotations

import logging
import platform
import socket
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)

from kms_policy_service.settings import (
    DEFAULT_METRICS_MAX_CONNECTIONS,
    DEFAULT_METRICS_REQUEST_TIMEOUT_SECONDS,
)

log = logging.getLogger(__name__)

# The /metrics listener is one thread per connection (prometheus_client's own server).
# Without a socket timeout a client that sends half a request holds its thread forever,
# so a few hundred such connections exhaust the process (slowloris). A scraper sends
# its whole request at once, and Prometheus's default scrape timeout is 10 s: a read
# or write idle for longer is not a scrape. Connections beyond the bound are closed
# unserved, so held ones cannot grow the thread count without limit either.
# socket inactivity, per read or write; connections (threads) served at once
METRICS_REQUEST_TIMEOUT_SECONDS = DEFAULT_METRICS_REQUEST_TIMEOUT_SECONDS
METRICS_MAX_CONNECTIONS = DEFAULT_METRICS_MAX_CONNECTIONS

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

grpc_server_started_total = Counter(
    "grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS
)
grpc_server_handled_total = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    (*GRPC_LABELS, "grpc_code"),
)
grpc_server_handling_seconds = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, until the status is sent.",
    GRPC_LABELS,
    buckets=_LATENCY_BUCKETS,
)
rpcs_in_flight = Gauge("kms_policy_rpcs_in_flight", "PolicyService RPCs being handled now.")

kms_requests_total = Counter(
    "kms_requests_total",
    "KMS requests (each attempt), by operation and outcome (ok, or the error table's reason).",
    ("operation", "outcome"),
)
kms_request_duration_seconds = Histogram(
    "kms_request_duration_seconds",
    "Duration of one KMS request (attempt).",
    ("operation",),
    buckets=_LATENCY_BUCKETS,
)
kms_retries_total = Counter("kms_retries_total", "KMS attempts that were retries.", ("operation",))
kms_requests_in_flight = Gauge("kms_requests_in_flight", "KMS requests in flight now.")
account_credentials = Gauge(
    "kms_policy_account_credentials",
    "Per member account (--account-role): 1 when its last AssumeRole succeeded, 0 when it "
    "failed, -1 before its first use.",
    ("account",),
)
assume_role_total = Counter(
    "kms_policy_assume_role_total",
    "STS AssumeRole calls for member accounts' credentials, by account and outcome (ok, failed).",
    ("account", "outcome"),
)
caller_sessions_evicted_total = Counter(
    "kms_policy_caller_sessions_evicted_total",
    "Assumed-role caller sessions closed to stay within --max-caller-sessions (least recent).",
)

ratelimit_waits_total = Counter(
    "kms_policy_ratelimit_waits_total", "Calls that waited for a rate-limit token.", ("operation",)
)
ratelimit_wait_seconds = Histogram(
    "kms_policy_ratelimit_wait_seconds",
    "Time calls waited for a rate-limit token.",
    ("operation",),
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
ratelimit_refusals_total = Counter(
    "kms_policy_ratelimit_refusals_total",
    "Calls refused by a limit; bucket is operation:<name>, caller, key or concurrency.",
    ("bucket",),
)
ratelimit_backend_degraded = Gauge(
    "kms_policy_ratelimit_backend_degraded",
    "1 while the shared (Redis) limiter is unreachable and local fallback buckets apply.",
)
admission_refusals_total = Counter(
    "kms_policy_admission_refusals_total",
    "RPCs refused before any handler work, by reason (caller_concurrency_limited, "
    "caller_rate_limited, caller_refusals_rate_limited, request_not_received, "
    "malformed_request).",
    ("reason",),
)
read_coalescing_waits_total = Counter(
    "kms_policy_read_coalescing_waits_total",
    "KMS reads of a hot key held for --read-coalescing-window so that concurrent "
    "identical reads join them, by what was read.",
    ("read",),
)
shared_reads_total = Counter(
    "kms_policy_shared_reads_total",
    "Reads that joined an identical KMS read already in flight instead of making their "
    "own, by what was read (policy: GetKeyPolicy, key: DescribeKey).",
    ("read",),
)
findings_truncated_total = Counter(
    "kms_policy_findings_truncated_total",
    "Answers whose findings were cut to the bound, by where (validate: --max-findings; "
    "status: the error trailer budget).",
    ("where",),
)
audit_write_failures_total = Counter(
    "kms_policy_audit_write_failures_total", "Audit records that could not be written."
)
audit_reopens_total = Counter(
    "kms_policy_audit_reopens_total",
    "Audit file reopens, by cause: moved (rotated away), deleted, signal (SIGHUP).",
    ("cause",),
)
audit_torn_lines_total = Counter(
    "kms_policy_audit_torn_lines_total",
    "Torn (unterminated) last lines found in the audit file and terminated before appending.",
)
audit_refusals_dropped_total = Counter(
    "kms_policy_audit_refusals_dropped_total",
    "Refused-attempt audit records not written (summarised later), by bucket: caller or total.",
    ("bucket",),
)
audit_policies_truncated_total = Counter(
    "kms_policy_audit_policies_truncated_total",
    "Refused-attempt records keeping only a prefix of a policy from an unauthorized caller.",
)
authz_reloads_total = Counter(
    "kms_policy_authz_reloads_total", "Authorization policy reloads, by result.", ("result",)
)
guardrails_reloads_total = Counter(
    "kms_policy_guardrails_reloads_total", "Guardrails file reloads, by result.", ("result",)
)
policy_refusals_total = Counter(
    "kms_policy_policy_refusals_total",
    "PutKeyPolicy calls refused for what the policy says, by "
    "check: document, lockout, scope, or guardrail/<name> (principal_accounts, org_ids, "
    "public, protected_sids, restricted_actions).",
    ("check",),
)
build_info = Gauge(
    "kms_policy_service_build_info", "Build information (always 1).", ("version", "python")
)
metrics_listener_refusals_total = Counter(
    "kms_policy_metrics_listener_refusals_total",
    "Connections to the /metrics listener closed unserved, by reason: timeout (idle longer "
    "than METRICS_REQUEST_TIMEOUT_SECONDS), too_many (over METRICS_MAX_CONNECTIONS at once).",
    ("reason",),
)


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """metric.labels(*labels), cached: the hot path pays one dict lookup, not a lock and a hash."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def bucket_label(bucket_name: str) -> str:
    """A bounded label for a bucket: per-caller and per-key buckets collapse to their kind."""
    kind = bucket_name.split(":", 1)[0]
    return bucket_name if kind == "operation" else kind


def set_build_info(version: str) -> None:
    build_info.labels(version=version, python=platform.python_version()).set(1)


class _MetricsRequestHandler(WSGIRequestHandler):
    """prometheus_client's WSGI handler, with its server's socket timeout; logs nothing."""

    server: _MetricsServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)  # every read and write

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:  # idle past the timeout: half a request, or not reading
            child(metrics_listener_refusals_total, "timeout").inc()
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing (one line per scrape)."""


class _MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_connections` of them; more are closed."""

    # listen() backlog: socketserver's 5 drops the SYNs of a burst of connections while the
    # accept thread waits for the GIL (each dropped one waits a 1 s retransmit).
    request_queue_size = METRICS_MAX_CONNECTIONS

    def __init__(
        self, address: tuple[str, int], family: int, request_timeout: float, max_connections: int
    ) -> None:
        self.address_family = family
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _MetricsRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            child(metrics_listener_refusals_total, "too_many").inc()
            self.shutdown_request(request)
            return
        try:
            threading.Thread(
                target=self.process_request_thread,
                args=(request, client_address),
                name="metrics-request",
                daemon=True,
            ).start()
        except BaseException:
            self._slots.release()
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; stderr is the JSON log.
        log.debug("metrics request failed", extra={"peer": str(client_address)}, exc_info=True)


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry = REGISTRY,
    *,
    request_timeout: float = METRICS_REQUEST_TIMEOUT_SECONDS,
    max_connections: int = METRICS_MAX_CONNECTIONS,
) -> Any:
    """Start the /metrics HTTP listener on its own thread; returns the server to shut down
    (`shutdown()`, then `server_close()`)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    server = _MetricsServer((str(sockaddr[0]), port), family, request_timeout, max_connections)
    server.set_app(make_wsgi_app(registry))
    threading.Thread(target=server.serve_forever, name="metrics-listener", daemon=True).start()
    return server
