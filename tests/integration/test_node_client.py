"""A Node.js caller (@grpc/grpc-js + @grpc/proto-loader) against the running service:
Put, Get, and a failing call whose google.rpc status details it decodes."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import google.rpc.status_pb2

from tests.conftest import RunningService

ROOT = Path(__file__).resolve().parents[2]
GOOGLE_PROTOS = Path(google.rpc.status_pb2.__file__).resolve().parents[2]


async def test_node_grpc_js_puts_gets_and_decodes_error_details(
    service: RunningService, key: dict[str, Any]
) -> None:
    node = shutil.which("node")
    assert node, "node is required (the project's setup installs the npm packages)"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(ROOT / "tests/node/policy_client.mjs"),
        service.target,
        key["Arn"],
        str(GOOGLE_PROTOS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["put"]["key_arn"] == key["Arn"] and len(result["put"]["etag"]) == 64
    assert result["got"]["etag"] == result["put"]["etag"]
    assert "FromNode" in result["got"]["policy"]
    failure = result["failure"]
    assert failure["grpcCode"] == 3 and failure["code"] == 3
    details = {d["type"]: d["value"] for d in failure["details"]}
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_POLICY"
    assert details["google.rpc.ErrorInfo"]["domain"] == "kmspolicy.v1"
    violation = details["google.rpc.BadRequest"]["fieldViolations"][0]
    assert violation["field"] == "policy" and violation["description"].startswith("Statement: ")
