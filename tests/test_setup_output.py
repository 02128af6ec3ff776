"""A quiet first run: `make setup`'s editable install raises no setuptools warning."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def makefile_warning_filter() -> str:
    """The PYTHONWARNINGS filter the Makefile sets for the editable install."""
    found = re.search(r"export PYTHONWARNINGS := (.+)", (ROOT / "Makefile").read_text())
    assert found, "the Makefile sets no PYTHONWARNINGS for the install"
    return found.group(1).strip()


def test_the_editable_install_builds_without_a_warning_under_the_makefiles_filter(
    tmp_path: Path,
) -> None:
    # A copy of what the build reads, so no egg-info or build/ lands in the work tree.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for package in ("service/kms_policy_service", "clients/kms_policy_client", "protos/kmspolicy"):
        shutil.copytree(
            ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # Later -W options win: every warning is an error except the one the Makefile filters.
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-W",
            makefile_warning_filter(),
            "-c",
            "import sys, setuptools.build_meta as b; b.build_editable(sys.argv[1])",
            str(wheels),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(wheels.glob("kms_policy_service-*.whl"))
