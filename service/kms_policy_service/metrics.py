"""Prometheus metrics, declared once, with bounded labels (no key ARNs, callers or messages).

Names follow what operators already chart: go-grpc-prometheus for the server side,
`kms_*` for the KMS client side (as the Kubernetes KMS plugins export).
"""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

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


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> Any:
    """Start the /metrics HTTP listener on its own thread; returns the server to shut down."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
