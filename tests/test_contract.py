"""The contract: committed stubs match the protos, buf lint is clean, names are importable."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"


def test_committed_stubs_match_a_fresh_generation() -> None:
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        from generate import generate  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        assert generated, "protoc wrote nothing"
        for path in generated:
            committed = ROOT / "protos" / path.relative_to(tmp)
            assert committed.exists(), f"{committed} is not committed: run make protos"
            assert committed.read_bytes() == path.read_bytes(), (
                f"{committed.relative_to(ROOT)} is stale: run make protos"
            )


def test_stubs_import_under_the_proto_package_path() -> None:
    from kmspolicy.v1 import policy_service_pb2, policy_service_pb2_grpc

    assert policy_service_pb2.DESCRIPTOR.package == "kmspolicy.v1"
    assert hasattr(policy_service_pb2_grpc, "PolicyServiceStub")
    assert (ROOT / "protos/kmspolicy/v1/policy_service_pb2.pyi").exists()


def test_buf_lint_is_clean() -> None:
    result = subprocess.run(
        [str(BUF), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_protoset_carries_the_contract_and_the_error_detail_types() -> None:
    from google.protobuf import descriptor_pb2

    protoset = descriptor_pb2.FileDescriptorSet.FromString(
        (ROOT / "protos/kmspolicy/v1/kmspolicy.protoset").read_bytes()
    )
    names = {f.name for f in protoset.file}
    assert {
        "kmspolicy/v1/policy_service.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/protobuf/any.proto",
        "google/protobuf/duration.proto",
    } <= names


def test_typescript_stubs_generate_from_the_buf_template(tmp_path: Path) -> None:
    import yaml

    template = yaml.safe_load((ROOT / "protos/buf.gen.yaml").read_text())
    # Only local plugins run offline; Go and Java use remote plugins (see buf.gen.yaml).
    template["plugins"] = [p for p in template["plugins"] if "local" in p]
    template["clean"] = False
    assert template["plugins"], "no local plugin in buf.gen.yaml"
    (tmp_path / "buf.gen.yaml").write_text(yaml.safe_dump(template))
    result = subprocess.run(
        [str(BUF), "generate", "--template", str(tmp_path / "buf.gen.yaml"), "-o", str(tmp_path)],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    generated = (tmp_path / "gen/ts/kmspolicy/v1/policy_service_pb.ts").read_text()
    assert "PolicyService" in generated and "PutKeyPolicyRequest" in generated


def test_the_proto_names_packages_for_go_and_java() -> None:
    text = (ROOT / "protos/kmspolicy/v1/policy_service.proto").read_text()
    assert 'option go_package = "' in text and 'option java_package = "' in text


def test_buf_breaking_against_main() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "main"], cwd=ROOT, capture_output=True
    )
    if not (ROOT / ".git").exists() or head.returncode != 0:
        import pytest

        pytest.skip("no git history to compare the contract against")
    result = subprocess.run(
        [str(BUF), "breaking", "protos", "--against", ".git#branch=main,subdir=protos"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
