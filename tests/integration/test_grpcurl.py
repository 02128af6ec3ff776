"""The real grpcurl binary against the running service: reflection, JSON in and out, health."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tests.conftest import RunningService, policy_for

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_grpcurl_lists_and_describes_the_service(service: RunningService) -> None:
    rc, out, err = await grpcurl("-plaintext", service.target, "list")
    assert rc == 0, err
    assert "kmspolicy.v1.PolicyService" in out.split()
    rc, out, err = await grpcurl(
        "-plaintext", service.target, "describe", "kmspolicy.v1.PolicyService"
    )
    assert rc == 0, err
    assert "rpc PutKeyPolicy ( .kmspolicy.v1.PutKeyPolicyRequest )" in out


async def test_grpcurl_puts_and_gets_a_policy_with_json(
    service: RunningService, key: dict[str, Any]
) -> None:
    policy = policy_for()
    request = json.dumps({"key_id": key["Arn"], "policy": policy})
    rc, out, err = await grpcurl(
        "-plaintext", "-d", request, service.target, "kmspolicy.v1.PolicyService/PutKeyPolicy"
    )
    assert rc == 0, err
    put = json.loads(out)
    rc, out, err = await grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"key_id": key["Arn"]}),
        service.target,
        "kmspolicy.v1.PolicyService/GetKeyPolicy",
    )
    assert rc == 0, err
    got = json.loads(out)
    assert got["policy"] == policy and got["etag"] == put["etag"]


async def test_grpcurl_health_check_answers_serving(service: RunningService) -> None:
    for name in ("", "kmspolicy.v1.PolicyService"):
        rc, out, err = await grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"service": name}),
            service.target,
            "grpc.health.v1.Health/Check",
        )
        assert rc == 0, err
        assert json.loads(out) == {"status": "SERVING"}


async def test_grpcurl_shows_a_failing_call_with_status_and_details(
    service: RunningService,
) -> None:
    rc, out, err = await grpcurl(
        "-plaintext",
        "-format-error",
        "-d",
        json.dumps({"key_id": "not a key"}),
        service.target,
        "kmspolicy.v1.PolicyService/GetKeyPolicy",
    )
    assert rc == 64 + 3  # grpcurl exits 64 + the gRPC code (INVALID_ARGUMENT)
    status = json.loads(out or err)
    assert status["code"] == 3
    info = next(d for d in status["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["reason"] == "INVALID_KEY_ID"
