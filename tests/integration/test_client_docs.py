"""The Python examples in docs/client.md run as they are against a live service."""

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
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "client.md").read_text(), flags=re.S)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"key_write_rate_limit": None}


@pytest.fixture(scope="module")
def demo_alias(kms: Any) -> str:
    if "alias/demo" not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}:
        kms.create_alias(
            AliasName="alias/demo",
            TargetKeyId=kms.create_key(Policy=policy_for())["KeyMetadata"]["KeyId"],
        )
    return "alias/demo"


def test_the_docs_have_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
async def test_example_runs(service: RunningService, demo_alias: str, example: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        example,
        env={
            **os.environ,
            "KMSPOLICY_TARGET": service.target,
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "clients", "protos")),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.strip()
