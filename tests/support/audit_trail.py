"""Reading the audit trail in tests, and the statement most audit tests add."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ACCOUNT


def decrypt_for(sid: str) -> dict[str, Any]:
    """An Allow of kms:Decrypt to the account: a harmless change to make."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": ACCOUNT},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }


DECRYPT = decrypt_for("AppDecrypt")


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of the audit file (none if it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
