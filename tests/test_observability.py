"""deploy/observability: the Prometheus rules (checked and unit-tested by promtool), the
PrometheusRule manifest and Grafana dashboard rendered from them, and every metric and
label they use checked against a scrape of the running service."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from kms_policy_service import metrics as service_metrics
from kms_policy_service.errors import KMS_ERROR_TABLE
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import policy_for
from tests.support.process import ServiceProcess, loopback_service
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "deploy" / "observability"
RULES = HERE / "kms-policy-service.rules.yaml"
RULE_TESTS = HERE / "kms-policy-service.rules.test.yaml"
DOCS = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus; make system-deps)"
)
_spec = importlib.util.spec_from_file_location("observability_render", HERE / "render.py")
assert _spec is not None and _spec.loader is not None
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


# -- PromQL: which metrics and labels an expression uses ----------------------------------

GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"} | GROUPING
TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]*\])|(?P<matchers>\{[^}]*\})'
    r"|(?P<name>[A-Za-z_:][\w:]*)|(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<other>\S)"
)
MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


@dataclass
class Usage:
    """What one expression reads: metric -> {label: values matched (None: any)}, and the
    labels it groups by."""

    metrics: dict[str, dict[str, set[str] | None]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def usage(expr: str) -> Usage:
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr)]
    found = Usage()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "name" and text in GROUPING and following[1] == "(":
            j = i + 2
            while j < len(tokens) and tokens[j][1] != ")":
                if tokens[j][0] == "name":
                    found.grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        # A name before "(" is a function; before "by (...)" an aggregation.
        if kind == "name" and text not in KEYWORDS and following[1] not in GROUPING | {"("}:
            labels = found.metrics.setdefault(text, {})
            if following[0] == "matchers":
                for label, op, value in MATCHER.findall(following[1][1:-1]):
                    values = None if op.startswith("!") or "$" in value else set(value.split("|"))
                    labels[label] = values
                i += 1
        i += 1
    return found


def test_the_expression_reader_sees_every_metric_label_and_grouping() -> None:
    found = usage(
        'sum by (job, le) (rate(grpc_server_handling_seconds_bucket{grpc_code=~"OK|INTERNAL"}[5m]))'
        " / ignoring (outcome) group_left sum(kms_requests_total) > bool 0.5 unless no_such_metric"
    )
    assert set(found.metrics) == {
        "grpc_server_handling_seconds_bucket",
        "kms_requests_total",
        "no_such_metric",
    }
    assert found.metrics["grpc_server_handling_seconds_bucket"] == {"grpc_code": {"OK", "INTERNAL"}}
    assert found.grouping == {"job", "le", "outcome"}


# -- what the rules and the dashboard use ----------------------------------------------------


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"]]


def recorded() -> dict[str, dict[str, Any]]:
    return {r["record"]: r for r in rules() if "record" in r}


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def dashboard_expressions() -> list[str]:
    exprs = [t["expr"] for p in render.dashboard()["panels"] for t in p.get("targets", [])]
    for variable in render.dashboard()["templating"]["list"]:
        query = variable.get("query", "")
        if query.startswith("label_values("):  # label_values(selector, label)
            selector, label = query[len("label_values(") : -1].rsplit(",", 1)
            exprs.append(f"sum by ({label.strip()}) ({selector})")
    return exprs


def used() -> list[tuple[str, Usage]]:
    return [(f"rule {r.get('record') or r['alert']}", usage(r["expr"])) for r in rules()] + [
        (f"dashboard {e}", usage(e)) for e in dashboard_expressions()
    ]


OUTSIDER = {
    "Sid": "Outsider",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
    "Action": "kms:Decrypt",
    "Resource": "*",
}

LOCKOUT = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{**OUTSIDER, "Principal": {"AWS": "arn:aws:iam::123456789012:role/app"}}],
    }
)

# -- the service, scraped ----------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    families: dict[str, str]  # family name -> type
    labels: dict[str, set[str]]  # series name -> label names seen
    values: dict[str, dict[str, set[str]]]  # series name -> label -> values seen

    def series(self) -> set[str]:
        names = set()
        for family, kind in self.families.items():
            if kind == "histogram":
                names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
            else:
                names.add(family)
        return names


def parse_exposition(text: str) -> Exported:
    families: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            families[name] = kind
        elif line and not line.startswith("#"):
            name = re.match(r"[A-Za-z_:][\w:]*", line).group()  # type: ignore[union-attr]
            pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0])
            labels.setdefault(name, set()).update(k for k, _ in pairs)
            for k, v in pairs:
                values.setdefault(name, {}).setdefault(k, set()).add(v)
    return Exported(families, labels, values)


def declared_labels(series: str) -> set[str]:
    """Labels the service declares for a series that has no sample yet (e.g. member
    accounts, only with --account-role)."""
    for metric in vars(service_metrics).values():
        names = getattr(metric, "_labelnames", None)
        base = getattr(metric, "_name", None)
        if names is None or base is None:
            continue
        if series in {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}:
            extra = {"le"} if series.endswith("_bucket") else set()
            return set(names) | extra
    return set()


@pytest.fixture(scope="module")
def exported(
    moto_url: str, kms: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exported]:
    """One scrape of a running service that has answered OK, refused, rate-limited,
    been sent garbage, had SIGHUP, and run its canary."""
    canary = kms.create_key(Description="canary")["KeyMetadata"]["Arn"]
    key = kms.create_key(Description="observability")["KeyMetadata"]["Arn"]
    directory = tmp_path_factory.mktemp("observability")
    audit = directory / "audit.log"
    guardrails = directory / "guardrails.yaml"
    guardrails.write_text('principal_accounts: ["123456789012"]\n')
    args = [
        *loopback_service(on=moto_url),
        "--metrics-listen=127.0.0.1:0",
        f"--audit-log={audit}",
        f"--guardrails={guardrails}",
        f"--kms-canary-key={canary}",
        "--kms-canary-interval=0.5",
        "--kms-rate-limit=ListKeyPolicies=0.01:1",
        "--max-queue-wait=0",
    ]
    service = ServiceProcess(args).start()
    try:
        port = next(int(r["port"]) for r in service.logs if r.get("message") == "metrics listener")
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key), timeout=10)
            stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key, policy=policy_for()), timeout=10)
            failing = [
                lambda: stub.GetKeyPolicy(
                    pb.GetKeyPolicyRequest(key_id="alias/missing"), timeout=10
                ),
                lambda: stub.PutKeyPolicy(  # GUARDRAIL_VIOLATION: another account
                    pb.PutKeyPolicyRequest(key_id=key, policy=policy_for(extra=[OUTSIDER])),
                    timeout=10,
                ),
                lambda: stub.PutKeyPolicy(  # POLICY_LOCKOUT: only an app role, no admin
                    pb.PutKeyPolicyRequest(key_id=key, policy=LOCKOUT), timeout=10
                ),
                lambda: stub.ListKeyPolicies(pb.ListKeyPoliciesRequest(key_id=key), timeout=10),
                lambda: stub.ListKeyPolicies(pb.ListKeyPoliciesRequest(key_id=key), timeout=10),
                lambda: channel.unary_unary(  # undecodable: MALFORMED_REQUEST
                    "/kmspolicy.v1.PolicyService/GetKeyPolicy"
                )(b"\xff\xff\xff", timeout=10),
            ]
            for call in failing:
                with contextlib.suppress(grpc.RpcError):
                    call()
        assert service.proc is not None
        service.proc.send_signal(signal.SIGHUP)  # audit reopened: cause="signal"

        def scrape() -> Exported | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                found = parse_exposition(r.read().decode())
            describe = found.values.get("kms_requests_total", {}).get("operation", set())
            reopened = "kms_policy_audit_reopens_total" in found.labels
            return found if "DescribeKey" in describe and reopened else None

        yield wait_for(scrape, 20, "the canary's DescribeKey and the SIGHUP reopen in a scrape")
    finally:
        service.stop()


def test_the_scrape_has_what_the_calls_produced(exported: Exported) -> None:
    codes = exported.values["grpc_server_handled_total"]["grpc_code"]
    assert {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"} <= codes
    assert "FAILED_PRECONDITION" in codes
    checks = exported.values["kms_policy_policy_refusals_total"]["check"]
    assert checks == {"guardrail/principal_accounts", "lockout"}  # the two refused Puts above
    assert "ok" in exported.values["kms_requests_total"]["outcome"]
    assert "malformed_request" in exported.values["kms_policy_admission_refusals_total"]["reason"]


def test_every_metric_a_rule_or_panel_uses_is_one_the_service_exports(
    exported: Exported,
) -> None:
    exports = exported.series()
    records = recorded()
    missing = sorted(
        (where, name)
        for where, found in used()
        for name in found.metrics
        if name not in exports and name not in records
    )
    assert not missing, missing


def test_every_label_a_rule_or_panel_matches_or_groups_by_is_one_its_metrics_carry(
    exported: Exported,
) -> None:
    records = recorded()
    # Added by Prometheus to every scraped series (namespace and pod by a PodMonitor).
    target = {"job", "instance", "namespace", "pod"}

    def labels_of(name: str) -> set[str]:
        if name in records:
            inner = usage(records[name]["expr"])
            return inner.grouping - {"le"} if inner.grouping else set()
        seen = exported.labels.get(name) or declared_labels(name)
        assert seen or name in exported.series(), name
        return seen | target

    wrong = []
    for where, found in used():
        available = set().union(*(labels_of(n) for n in found.metrics)) | target
        for name, matchers in found.metrics.items():
            wrong += [(where, name, label) for label in matchers if label not in labels_of(name)]
        wrong += [(where, "by", label) for label in found.grouping if label not in available]
    assert not wrong, wrong


def test_every_label_value_a_rule_or_panel_matches_is_one_the_service_can_export() -> None:
    """grpc_code is the grpc.StatusCode name (OK, INVALID_ARGUMENT), outcome `ok`,
    `cancelled` or a reason of the KMS error table in lower case."""
    outcomes = {"ok", "cancelled"} | {
        rule.reason.lower() for rules_ in KMS_ERROR_TABLE.values() for rule in rules_
    }
    codes = {code.name for code in grpc.StatusCode}
    allowed = {
        "outcome": outcomes,
        "grpc_code": codes,
        "grpc_service": {"kmspolicy.v1.PolicyService"},
    }
    wrong = [
        (where, label, value)
        for where, found in used()
        for matchers in found.metrics.values()
        for label, values in matchers.items()
        if label in allowed and values is not None
        for value in values
        if value not in allowed[label]
    ]
    assert not wrong, wrong


# -- promtool, the manifest, the dashboard, the runbook ----------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_make_every_alert_fire_and_hold_where_it_should() -> None:
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        t["alertname"] for case in cases for t in case.get("alert_rule_test", []) if t["exp_alerts"]
    }
    assert firing == {a["alert"] for a in alerts()}  # every alert is shown to fire


def test_the_prometheusrule_manifest_is_rendered_from_the_rules_file() -> None:
    manifest = yaml.safe_load(render.PROMETHEUS_RULE.read_text())
    assert manifest == render.prometheus_rule()
    assert manifest["kind"] == "PrometheusRule" and manifest["spec"]["groups"] == rule_groups()


def test_the_dashboard_json_is_rendered_by_render_py_and_every_panel_has_a_query() -> None:
    dashboard = json.loads(render.DASHBOARD.read_text())
    assert dashboard == render.dashboard()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p["targets"] and p["datasource"] for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_observability_kustomization_renders_the_rule_monitor_and_dashboard() -> None:
    from tests.test_deploy import kubectl

    out = subprocess.run(
        [kubectl(), "kustomize", str(HERE)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert set(docs) == {"PrometheusRule", "PodMonitor", "ConfigMap"}
    assert docs["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        json.loads(docs["ConfigMap"]["data"]["kms-policy-service.dashboard.json"])
        == render.dashboard()
    )


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section_in_operations_md() -> None:
    headings = {
        re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", DOCS.read_text(), re.M)
    }
    docs_url = (
        "https://github.com/kms-policy-service/kms-policy-service/blob/main/docs/operations.md#"
    )
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        anchor = alert["annotations"]["runbook_url"].removeprefix(docs_url)
        assert anchor == alert["alert"].lower(), alert["alert"]
        assert anchor in headings, f"docs/operations.md has no section {alert['alert']}"
    (link,) = render.dashboard()["links"]
    assert link["url"].removeprefix(docs_url) in headings, link
