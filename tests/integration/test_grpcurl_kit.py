"""Every command in docs/grpcurl.md runs against a live service with the documented exit code."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningService, policy_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "grpcurl.md"
EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")


def documented_commands() -> list[tuple[str, int]]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    commands: list[tuple[str, int]] = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip() or line.startswith(("#", "export ")):
                continue
            m = EXIT.search(line)
            commands.append((EXIT.sub("", line), int(m.group(1)) if m else 0))
    return commands


@pytest.fixture(scope="module")
def demo_alias(kms: Any) -> str:
    aliases = {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    if "alias/demo" not in aliases:
        key_id = kms.create_key(Policy=policy_for())["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/demo", TargetKeyId=key_id)
    return "alias/demo"


def test_the_kit_documents_every_rpc_with_and_without_the_protoset() -> None:
    commands = [c for c, _ in documented_commands()]
    for rpc in ("GetKeyPolicy", "PutKeyPolicy", "ListKeyPolicies", "ValidateKeyPolicy"):
        assert any(f"$S/{rpc}" in c and "-protoset" not in c for c in commands), rpc
        assert any(f"$S/{rpc}" in c and "-protoset" in c for c in commands), rpc


@pytest.mark.parametrize(("command", "expected"), documented_commands(), ids=lambda v: str(v)[:60])
async def test_documented_command_runs(
    service: RunningService, demo_alias: str, command: str, expected: int
) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "T": service.target,
        "S": "kmspolicy.v1.PolicyService",
        "P": "protos/kmspolicy/v1/kmspolicy.protoset",
    }
    script = command
    if "$ETAG" in command:  # the read-modify-write pair: the read defines ETAG
        reader = next(c for c, _ in documented_commands() if c.startswith("ETAG="))
        script = f"{reader}\n{command}"
    if command.startswith("ETAG="):
        script = f"{command}\ntest ${{#ETAG}} -eq 64"
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-o",
        "pipefail",
        "-c",
        script,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == expected, (out + err).decode()
    if expected:
        assert b'"details"' in out + err and b"google.rpc.ErrorInfo" in out + err
