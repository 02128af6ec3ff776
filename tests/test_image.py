"""The container image, built from deploy/Dockerfile with podman and run as the manifests
run it: UID 10001, read-only root filesystem, every capability dropped, no new
privileges, /tmp a small tmpfs (tests/support/podman.py builds it on a local Debian base).

Select these with `-m image`; they run wherever podman is installed (`make system-deps`).
The figures (size, start to SERVING, idle RSS) are printed and kept in
~/.cache/kms-policy-service-tests/image-figures.json for docs/operations.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import policy_for
from tests.support import podman
from tests.support.podman import HARDENED, Container
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.image,
    pytest.mark.skipif(
        podman.unavailable_reason() is not None, reason=str(podman.unavailable_reason())
    ),
]

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
SERVICE = "kmspolicy.v1.PolicyService"
MB = 1000 * 1000  # as podman reports sizes
FIGURES: dict[str, Any] = {}
PUBLISHED = ("-p", "127.0.0.1::50051", "-p", "127.0.0.1::50052", "-p", "127.0.0.1::9090")
LISTENERS = (
    "--listen=0.0.0.0:50051",
    "--insecure",  # the bridge network is not loopback; the test is the only peer
    "--health-listen=0.0.0.0:50052",
    "--metrics-listen=0.0.0.0:9090",
)


@pytest.fixture(scope="module", autouse=True)
def _figures() -> Iterator[None]:
    yield
    if FIGURES:
        out = podman.CACHE / "image-figures.json"
        out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
        print(f"\nimage figures ({out}): {json.dumps(FIGURES, sort_keys=True)}")


@pytest.fixture(scope="module")
def default_image() -> podman.Built:
    built = podman.build_image()
    if built.seconds:
        FIGURES["default_build_seconds"] = round(built.seconds, 1)
    return built


@pytest.fixture(scope="module")
def local_image() -> podman.Built:
    built = podman.build_image("local")
    if built.seconds:
        FIGURES["local_build_seconds"] = round(built.seconds, 1)
    return built


def health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(answer.status)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def grpcurl(target: str, method: str, request: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run(
        [GRPCURL, "-plaintext", "-d", "@", target, f"{SERVICE}/{method}"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def rss_kib(container: Container) -> int:
    status = container.exec("cat", "/proc/1/status").stdout
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def started_to_serving(container: Container) -> float:
    """Seconds from the container's process start to the service's "serving" record."""
    started = podman.parse_time(container.inspect()["State"]["StartedAt"].replace(" ", "T", 1))
    serving = next(r for r in container.records() if r.get("message") == "serving")
    return podman.parse_time(serving["time"]) - started


# -- what is in the image -------------------------------------------------------------------


def test_the_default_image_adds_at_most_90_mb_to_its_base_and_has_no_moto(
    default_image: podman.Built,
) -> None:
    added = podman.image_size(default_image.tag) - podman.image_size(default_image.base)
    FIGURES["default_added_mb"] = round(added / MB, 1)
    assert added <= 90 * MB, f"the image adds {added / MB:.1f} MB to its base"
    result = podman.podman(
        "run", "--rm", "--entrypoint", "python", default_image.tag, "-c", "import moto", check=False
    )
    assert result.returncode != 0 and "No module named 'moto'" in result.stderr


def test_the_local_extra_is_a_build_argument_that_adds_moto(local_image: podman.Built) -> None:
    added = podman.image_size(local_image.tag) - podman.image_size(local_image.base)
    FIGURES["local_added_mb"] = round(added / MB, 1)
    result = podman.podman(
        "run", "--rm", "--entrypoint", "python", local_image.tag, "-c", "import moto.server"
    )
    assert result.returncode == 0


def files_of(image: str) -> set[str]:
    out = podman.podman(
        "run", "--rm", "--user=0", "--entrypoint", "find", image, "/", "-xdev", "-not", "-type", "d"
    ).stdout
    return set(out.split("\n")) - {""}


def test_the_image_holds_what_the_runtime_needs_and_nothing_of_the_build(
    default_image: podman.Built,
) -> None:
    added = files_of(default_image.tag) - files_of(default_image.base)
    assert "/usr/local/bin/kms-policy-service" in added
    assert any(f.endswith("/kms_policy_service/server.py") for f in added)
    leftovers = sorted(
        f
        for f in added
        if f.startswith(("/src/", "/wheels/", "/root/.cache/", "/tmp/", "/.cache/"))
        or f.endswith((".whl", "pyproject.toml", "/Dockerfile"))
        or re.search(r"/(tests?/support|tests/conftest\.py|kms_faults\.py)", f)
        or re.search(r"/bin/(cc|gcc|g\+\+|x86_64-linux-gnu-gcc[-\d.]*|make)$", f)
        # pip's own modules byte-compiled while it installed (PYTHONDONTWRITEBYTECODE)
        or re.search(r"/site-packages/(pip|setuptools)/.*\.pyc$", f)
    )
    assert not leftovers, leftovers[:20]
    # Every botocore model but the ones the service calls is gone.
    models = {f.split("/botocore/data/")[1].split("/")[0] for f in added if "/botocore/data/" in f}
    assert (
        {"kms", "sts"}
        <= models
        <= {"kms", "sts", "sso", "sso-oidc"}
        | {m for m in models if m.endswith((".json", ".json.gz"))}
    )
    check = podman.podman(
        "run", "--rm", *HARDENED, "--entrypoint", "python", default_image.tag, "-m", "pip", "check"
    )
    assert "No broken requirements found" in check.stdout
    # The pruned SDK data, written from the image's own botocore, is where the SDK looks.
    sdk = podman.podman(
        "run",
        "--rm",
        *HARDENED,
        "--entrypoint",
        "python",
        default_image.tag,
        "-c",
        "import botocore, json, os, pathlib; d = pathlib.Path(os.environ['AWS_DATA_PATH']); "
        "print(json.loads((d / 'kms-policy-service-sdk-data.json').read_text())['botocore'] "
        "== botocore.__version__, sorted(p.name for p in d.iterdir()))",
    )
    assert sdk.stdout.split(None, 1) == [
        "True",
        "['endpoints.json', 'kms', 'kms-policy-service-sdk-data.json', 'sts']\n",
    ]
    config = json.loads(podman.podman("image", "inspect", default_image.tag).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["kms-policy-service"]
    assert config["User"] == "10001:10001"


@pytest.mark.parametrize("variant", ["default", "local"])
def test_the_image_runs_the_code_of_this_tree(variant: str, request: pytest.FixtureRequest) -> None:
    # buildah's layer cache once kept an old install: the sources must be the tree's own.
    built: podman.Built = request.getfixturevalue(f"{variant}_image")
    package = podman.ROOT / "service" / "kms_policy_service"
    here = {
        str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(package.rglob("*.py"))
    }
    script = (
        "import hashlib, pathlib, kms_policy_service as k; "
        "root = pathlib.Path(k.__file__).parent; "
        "print('\\n'.join(f'{p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}' "
        "for p in sorted(root.rglob('*.py'))))"
    )
    out = podman.podman("run", "--rm", "--entrypoint", "python", built.tag, "-c", script).stdout
    inside = dict(line.split(" ", 1) for line in out.splitlines() if line)
    assert inside == here


@pytest.mark.parametrize("variant", ["default", "local"])
def test_a_bad_flag_exits_2(variant: str, request: pytest.FixtureRequest) -> None:
    built: podman.Built = request.getfixturevalue(f"{variant}_image")
    result = podman.podman("run", "--rm", *HARDENED, built.tag, "--no-such-flag", check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "unrecognized arguments: --no-such-flag" in result.stderr


# -- the running service ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_service(local_image: podman.Built) -> Iterator[Container]:
    container = Container(
        local_image.tag, ("--local-kms", *LISTENERS), (*HARDENED, *PUBLISHED)
    ).start()
    try:
        target = f"127.0.0.1:{container.port(50051)}"
        wait_for(lambda: health(target, SERVICE) == 1, 60, "SERVING", interval=0.05)
        FIGURES["local_start_to_serving_seconds"] = round(started_to_serving(container), 2)
        yield container
    finally:
        container.close()


def test_the_service_runs_as_uid_10001_with_no_capabilities_on_a_read_only_root(
    local_service: Container,
) -> None:
    status = local_service.exec("cat", "/proc/1/status").stdout
    assert re.search(r"^Uid:\s+10001\s+10001", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(
        r"^NoNewPrivs:\s+1$", status, re.M
    )
    assert local_service.exec("touch", "/usr/local/probe", check=False).returncode != 0
    assert local_service.exec("touch", "/tmp/probe", check=False).returncode == 0


def test_local_kms_reflection_and_health_answer_in_the_image(local_service: Container) -> None:
    target = f"127.0.0.1:{local_service.port(50051)}"
    assert health(target) == health(target, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for a in answers for s in a.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    assert any(r.get("demo_key_arn") for r in local_service.records())


def test_grpcurl_puts_and_gets_a_policy_through_the_image(local_service: Container) -> None:
    target = f"127.0.0.1:{local_service.port(50051)}"
    before = grpcurl(target, "GetKeyPolicy", {"key_id": "alias/demo"})
    policy = policy_for(
        extra=[
            {
                "Sid": "ImageTest",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:role/app"},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    put = grpcurl(
        target,
        "PutKeyPolicy",
        {"key_id": before["key_arn"], "policy": policy, "etag": before["etag"]},
    )
    assert put["etag"] != before["etag"]
    after = grpcurl(target, "GetKeyPolicy", {"key_id": before["key_arn"]})
    assert json.loads(after["policy"]) == json.loads(policy) and after["etag"] == put["etag"]


def test_the_health_only_listener_and_metrics_answer_from_the_image(
    local_service: Container,
) -> None:
    target = f"127.0.0.1:{local_service.port(50052)}"
    assert health(target) == health(target, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.PolicyServiceStub(channel).GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id="alias/demo"), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED  # probes only
    main = f"127.0.0.1:{local_service.port(50051)}"
    grpcurl(main, "GetKeyPolicy", {"key_id": "alias/demo"})
    text = scrape(local_service.port(9090))
    assert (sample(text, "kms_requests_total", operation="GetKeyPolicy", outcome="ok") or 0) >= 1
    assert sample(text, "kms_policy_service_build_info") == 1.0
    FIGURES["local_idle_rss_mib"] = round(rss_kib(local_service) / 1024, 1)


def test_sigterm_drains_an_in_flight_call_to_ok_and_the_container_exits_0(
    local_image: podman.Built,
) -> None:
    # One GetKeyPolicy token per 5 s: the second Get waits in the limiter while SIGTERM comes.
    args = ("--local-kms", *LISTENERS, "--kms-rate-limit=GetKeyPolicy=0.2:1", "--max-queue-wait=8")
    container = Container(local_image.tag, args, (*HARDENED, *PUBLISHED)).start()
    try:
        target = f"127.0.0.1:{container.port(50051)}"
        wait_for(lambda: health(target, SERVICE) == 1, 60, "SERVING", interval=0.05)
        metrics_port = container.port(9090)
        arn = next(r["demo_key_arn"] for r in container.records() if r.get("demo_key_arn"))
        outcome: dict[str, Any] = {}

        def call() -> None:
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.PolicyServiceStub(channel)
                stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn), timeout=20)
                try:
                    outcome["answer"] = stub.GetKeyPolicy(
                        pb.GetKeyPolicyRequest(key_id=arn), timeout=20
                    )
                except grpc.RpcError as exc:
                    outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(
            lambda: sample(scrape(metrics_port), "kms_policy_ratelimit_waits_total") == 1.0,
            20,
            "the second Get to wait for its token",
        )
        assert "answer" not in outcome
        container.signal("TERM")
        caller.join(30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["answer"].key_arn == arn
        assert container.wait(30) == 0
        messages = [r.get("message") for r in container.records()]
        assert "serving" in messages
    finally:
        container.close()


def test_start_to_serving_and_idle_memory_of_the_default_image(
    default_image: podman.Built, moto_url: str
) -> None:
    """Against the host's moto (host network: the container reaches it on loopback)."""
    args = (
        "--listen=127.0.0.1:0",
        "--health-listen=127.0.0.1:0",
        f"--kms-endpoint-url={moto_url}",
        f"--sts-endpoint-url={moto_url}",
    )
    aws = [
        f"--env=AWS_{name}"
        for name in ("ACCESS_KEY_ID=testing", "SECRET_ACCESS_KEY=testing", "REGION=us-east-1")
    ]
    container = Container(default_image.tag, args, (*HARDENED, "--network=host", *aws)).start()
    try:

        def serving_port() -> int | None:
            for r in container.records():
                if r.get("message") == "serving":
                    return int(r["port"])
            assert container.running(), container.logs()
            return None

        port = wait_for(serving_port, 60, "the serving record")
        assert health(f"127.0.0.1:{port}", SERVICE) == health_pb2.HealthCheckResponse.SERVING
        FIGURES["default_start_to_serving_seconds"] = round(started_to_serving(container), 2)
        rss = rss_kib(container)
        FIGURES["default_idle_rss_mib"] = round(rss / 1024, 1)
        # The sidecar overlay requests 96 MiB: an idle service must fit in its request.
        assert rss < 96 * 1024, f"idle RSS {rss / 1024:.1f} MiB"
    finally:
        container.close()
