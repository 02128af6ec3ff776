"""ruff and mypy (strict) stay clean; aiobotocore is imported by exactly one module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_and_format_are_clean() -> None:
    lint = run(str(BIN / "ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout
    fmt = run(str(BIN / "ruff"), "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict_is_clean() -> None:
    result = run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout


def test_only_the_kms_module_imports_aiobotocore_or_botocore() -> None:
    pattern = re.compile(r"^\s*(?:from|import)\s+(?:aio)?botocore\b", re.MULTILINE)
    importers = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "service").rglob("*.py")
        if pattern.search(p.read_text())
    )
    assert importers == ["service/kms_policy_service/kms.py"]
