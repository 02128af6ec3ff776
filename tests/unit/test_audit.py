"""Audit records: durable lines, the change summary, and refusal when unwritable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kms_policy_service.audit import AuditLog, change_summary
from kms_policy_service.errors import Unavailable


def test_change_summary_names_statements_by_sid_or_index() -> None:
    before = {
        "Statement": [
            {"Sid": "A", "Effect": "Allow"},
            {"Sid": "B", "Effect": "Allow"},
            {"Effect": "Deny"},
        ]
    }
    after = {
        "Statement": [
            {"Sid": "A", "Effect": "Deny"},
            {"Sid": "C", "Effect": "Allow"},
            {"Effect": "Deny"},
        ]
    }
    assert change_summary(before, after) == {"added": ["C"], "removed": ["B"], "changed": ["A"]}
    assert change_summary(None, {"Statement": {"Sid": "X"}}) == {
        "added": ["X"],
        "removed": [],
        "changed": [],
    }


async def test_records_are_json_lines_with_an_utc_time(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"))
    await log.record({"phase": "intent", "previous_policy": "{}", "new_policy": "{}"}, durable=True)
    line = json.loads((tmp_path / "audit.log").read_text().splitlines()[0])
    assert line["phase"] == "intent" and line["time"].endswith("Z") and "previous_policy" in line


async def test_policies_can_be_omitted(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"), omit_policies=True)
    await log.record({"previous_policy": "{}", "new_policy": "{}", "new_etag": "e"}, durable=True)
    line = json.loads((tmp_path / "audit.log").read_text())
    assert "previous_policy" not in line and line["new_etag"] == "e"


async def test_an_unwritable_log_refuses_durable_records(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AuditLog(str(blocker / "audit.log"))  # a file where a directory should be
    assert not log.healthy
    with pytest.raises(Unavailable) as caught:
        await log.record({"phase": "intent"}, durable=True)
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    await log.record({"phase": "refused"}, durable=False)  # best effort: no raise
