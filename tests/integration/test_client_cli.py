"""The `kmspolicy` command against the real server: output, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ACCOUNT, RunningService, policy_for

KMSPOLICY = str(Path(sys.executable).parent / "kmspolicy")
DECRYPT = {
    "Sid": "AppDecrypt",
    "Effect": "Allow",
    "Principal": {"AWS": ACCOUNT},
    "Action": "kms:Decrypt",
    "Resource": "*",
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"key_write_rate_limit": None}


async def kmspolicy(
    service: RunningService, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    import os

    proc = await asyncio.create_subprocess_exec(
        KMSPOLICY,
        "--target",
        service.target,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    assert "Traceback" not in err.decode()
    return proc.returncode, out.decode(), err.decode()


async def test_get_prints_the_policy_and_writes_a_file(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    rc, out, _ = await kmspolicy(service, "get", key["Arn"])
    assert rc == 0 and json.loads(out) == json.loads(policy_for())
    rc, out, _ = await kmspolicy(service, "--output", "json", "get", key["Arn"])
    assert (
        rc == 0 and json.loads(out)["key_arn"] == key["Arn"] and len(json.loads(out)["etag"]) == 64
    )
    rc, _, err = await kmspolicy(service, "get", key["Arn"], "-o", str(tmp_path / "p.json"))
    assert "etag" in err
    assert rc == 0 and json.loads((tmp_path / "p.json").read_text()) == json.loads(policy_for())


async def test_put_with_dry_run_etag_and_bypass(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    new = tmp_path / "new.json"
    new.write_text(policy_for(extra=[DECRYPT]))
    rc, out, _ = await kmspolicy(service, "put", key["Arn"], "-f", str(new), "--dry-run")
    assert rc == 0 and out.startswith("would write")
    rc, out, _ = await kmspolicy(service, "--output", "json", "get", key["Arn"])
    etag = json.loads(out)["etag"]
    rc, out, _ = await kmspolicy(service, "put", key["Arn"], "-f", str(new), "--etag", etag)
    assert rc == 0 and out.startswith("wrote")
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", str(new), "--etag", etag)
    assert rc == 6 and "ETAG_MISMATCH" in err
    locked = tmp_path / "locked.json"
    locked.write_text(json.dumps({"Version": "2012-10-17", "Statement": [DECRYPT]}))
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", str(locked))
    assert rc == 4 and err.splitlines()[0].startswith(
        "kmspolicy: INVALID_ARGUMENT [POLICY_LOCKOUT]"
    )
    rc, _, _ = await kmspolicy(
        service, "put", key["Arn"], "-f", str(locked), "--bypass-lockout-check"
    )
    assert rc == 0


async def test_validate_prints_a_table_and_fails_on_errors(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {**DECRYPT, "Principal": "*"},
                    {**DECRYPT, "Sid": "X", "Action": "s3:*"},
                ],
            }
        )
    )
    rc, out, _ = await kmspolicy(service, "validate", "-f", str(bad))
    lines = out.splitlines()
    assert rc == 1 and lines[0].split() == ["SEVERITY", "CODE", "PATH", "MESSAGE"]
    assert any(
        line.split()[:3] == ["warning", "PUBLIC_ACCESS", "Statement[0].Principal"] for line in lines
    )
    assert any(
        line.split()[:3] == ["error", "INVALID_ACTION", "Statement[1].Action"] for line in lines
    )
    good = tmp_path / "good.json"
    good.write_text(policy_for())
    rc, out, _ = await kmspolicy(
        service, "--output", "json", "validate", "-f", str(good), "--key", key["Arn"]
    )
    assert rc == 0 and json.loads(out) == {"ok": True, "findings": []}


async def test_diff_shows_statement_changes(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    wanted = tmp_path / "wanted.json"
    wanted.write_text(policy_for(extra=[DECRYPT]))
    rc, out, _ = await kmspolicy(service, "diff", key["Arn"], "-f", str(wanted))
    assert rc == 1 and out.splitlines()[0] == "+ added AppDecrypt"
    same = tmp_path / "same.json"
    same.write_text(policy_for())
    rc, out, _ = await kmspolicy(service, "diff", key["Arn"], "-f", str(same))
    assert rc == 0 and out.strip() == "no differences"


async def test_edit_opens_the_editor_validates_shows_the_diff_and_writes_on_yes(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "p = sys.argv[1]\n"
        "d = json.load(open(p))\n"
        f"d['Statement'].append({DECRYPT!r})\n"
        "json.dump(d, open(p, 'w'))\n"
    )
    env = {"EDITOR": f"{sys.executable} {editor}", "VISUAL": ""}
    rc, out, err = await kmspolicy(service, "edit", key["Arn"], stdin="n\n", env=env)
    assert rc == 1 and "+ added AppDecrypt" in out and "not applied" in err
    rc, out, err = await kmspolicy(service, "edit", key["Arn"], stdin="y\n", env=env)
    assert rc == 0 and "wrote" in err
    rc, out, _ = await kmspolicy(service, "get", key["Arn"])
    assert json.loads(out)["Statement"][-1]["Sid"] == "AppDecrypt"


async def test_errors_are_one_line_plus_violations_and_json_for_scripts(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"Version": "2012-10-17", "Statement": [{**DECRYPT, "Principal": {"AWS": "nobody"}}]}
        )
    )
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", str(bad))
    assert rc == 4
    first, violation = err.splitlines()[:2]
    assert first.startswith("kmspolicy: INVALID_ARGUMENT [INVALID_POLICY]:")
    assert violation.strip().startswith(
        "policy Statement[0].Principal.AWS:"
    ) and violation.endswith("(INVALID_PRINCIPAL)")
    rc, _, err = await kmspolicy(service, "--output", "json", "get", "alias/missing-key")
    assert rc == 3 and json.loads(err)["reason"] == "KEY_NOT_FOUND"
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", str(tmp_path / "nope.json"))
    assert rc == 2 and err.startswith("kmspolicy:")
