"""The `kmspolicy` command against the real server: output, exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector

KMSPOLICY = str(Path(sys.executable).parent / "kmspolicy")
DECRYPT = {
    "Sid": "AppDecrypt",
    "Effect": "Allow",
    "Principal": {"AWS": ACCOUNT},
    "Action": "kms:Decrypt",
    "Resource": "*",
}
STRANGER = "999999999999"
GUARDRAILS = f"principal_accounts: ['{ACCOUNT}']\npublic: deny\n"
SCOPED = """
rules:
  - callers: ['local']
    actions: ['GetKeyPolicy', 'PutKeyPolicy', 'ValidateKeyPolicy']
    keys: ['*']
    scope: {sids: ['app-*']}
"""


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {"key_write_rate_limit": None}
    files = {"guardrails": GUARDRAILS, "authz_policy": SCOPED}
    for name in getattr(request, "param", ()):  # the setting that names a file, for this test
        (tmp_path / f"{name}.yaml").write_text(files[name])
        values[name] = str(tmp_path / f"{name}.yaml")
    return values


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


def policy_file(tmp_path: Path, *statements: dict[str, Any]) -> str:
    path = tmp_path / "policy.json"
    path.write_text(policy_for(extra=list(statements)))
    return str(path)


@pytest.mark.parametrize("settings_overrides", [["guardrails"]], indirect=True)
async def test_put_prints_each_guardrail_violation_with_its_path(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], tmp_path: Path
) -> None:
    path = policy_file(
        tmp_path,
        {**DECRYPT, "Principal": {"AWS": f"arn:aws:iam::{STRANGER}:root"}},
        {**DECRYPT, "Sid": "Anyone", "Principal": "*"},
    )
    faults.clear()
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", path, "--dry-run")
    first, *details = err.splitlines()
    assert rc == 6 and first.startswith("kmspolicy: FAILED_PRECONDITION [GUARDRAIL_VIOLATION]:")
    assert [(d.split(":")[0].strip(), d.rsplit(" ", 1)[-1]) for d in details] == [
        ("policy Statement[1].Principal.AWS", "(GUARDRAIL_PRINCIPAL_ACCOUNTS)"),
        ("policy Statement[2].Principal", "(GUARDRAIL_PUBLIC)"),
    ]
    rc, _, err = await kmspolicy(service, "--output", "json", "put", key["Arn"], "-f", path)
    data = json.loads(err)
    assert rc == 6 and data["guardrails"] == ["principal_accounts", "public"]
    assert [(v["guardrail"], v["path"]) for v in data["violations"]] == [
        ("principal_accounts", "Statement[1].Principal.AWS"),
        ("public", "Statement[2].Principal"),
    ]
    assert "PutKeyPolicy" not in faults.kms_operations()


@pytest.mark.parametrize("settings_overrides", [["guardrails"]], indirect=True)
async def test_validate_lists_each_guardrail_violation_with_its_path(
    service: RunningService, key: dict[str, Any], tmp_path: Path
) -> None:
    path = policy_file(tmp_path, {**DECRYPT, "Sid": "Anyone", "Principal": "*"})
    rc, out, _ = await kmspolicy(service, "validate", "-f", path, "--key", key["Arn"])
    rows = [line.split()[:3] for line in out.splitlines()[1:]]
    assert rc == 1 and ["error", "GUARDRAIL_PUBLIC", "Statement[1].Principal"] in rows


@pytest.mark.parametrize("settings_overrides", [["authz_policy"]], indirect=True)
async def test_put_out_of_scope_prints_the_caller_and_each_violation_with_its_path(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], tmp_path: Path
) -> None:
    path = policy_file(tmp_path, {**DECRYPT, "Sid": "billing"})
    faults.clear()
    rc, _, err = await kmspolicy(service, "put", key["Arn"], "-f", path)
    first, caller, violation = err.splitlines()
    assert rc == 5 and first.startswith("kmspolicy: PERMISSION_DENIED [OUT_OF_SCOPE]:")
    assert caller == "  caller local"  # the identity the service judged
    assert violation.startswith("  policy Statement[1].Sid: ")
    assert violation.endswith(" (OUT_OF_SCOPE)")
    rc, _, err = await kmspolicy(service, "--output", "json", "put", key["Arn"], "-f", path)
    data = json.loads(err)
    assert rc == 5 and data["caller"] == "local"
    assert [(v["path"], v["reason"]) for v in data["violations"]] == [
        ("Statement[1].Sid", "OUT_OF_SCOPE")
    ]
    assert "PutKeyPolicy" not in faults.kms_operations()
