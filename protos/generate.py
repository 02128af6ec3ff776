"""Regenerates the Python stubs (and .pyi) for the kmspolicy.v1 contract beside the protos,
and the grpcurl descriptor set (the contract plus google/rpc/status.proto and
error_details.proto, so grpcurl can decode error details without reflection).

Run `python protos/generate.py` (or `make protos`). The suite regenerates into a
temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ["kmspolicy/v1/policy_service.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".protoset")
PROTOSET = "kmspolicy/v1/kmspolicy.protoset"
RPC_PROTOS = ["google/rpc/status.proto", "google/rpc/error_details.proto"]


def googleapis_root() -> Path:
    """Where googleapis-common-protos keeps google/rpc/*.proto."""
    import google.rpc.status_pb2 as status

    return Path(status.__file__).resolve().parents[2]


def generate(out_dir: Path) -> list[Path]:
    """Generate stubs for PROTO_FILES into out_dir; return the files written."""
    from grpc_tools import protoc  # dev-only dependency

    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    (out_dir / PROTOSET).parent.mkdir(parents=True, exist_ok=True)
    protoset = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{googleapis_root()}",
        f"-I{include}",
        "--include_imports",
        f"--descriptor_set_out={out_dir / PROTOSET}",
        *PROTO_FILES,
        *RPC_PROTOS,
    ]
    if protoc.main(protoset) != 0:
        raise RuntimeError("protoc failed: " + " ".join(protoset))
    return sorted(p for p in out_dir.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            target = PROTO_ROOT / path.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            print(f"wrote {target.relative_to(PROTO_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
