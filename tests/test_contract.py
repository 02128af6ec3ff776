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
            assert committed.read_text() == path.read_text(), (
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
