"""The audit file through the real server: it follows rotation and deletion, a torn last
line never corrupts the next record, and no record content can stop a record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.audit_trail import decrypt_for, records
from tests.support.waiting import until

TORN = '{"time":"2024-01-01T00:00:00.000Z","phase":"intent","previous_policy":"{\\"Ver'


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.log"


@pytest.fixture
def settings_overrides(audit_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if getattr(request, "param", None) == "TORN":  # what a SIGKILL mid-write leaves
        audit_path.parent.mkdir(parents=True)
        audit_path.write_text('{"phase":"outcome"}\n' + TORN)
    return {"audit_log": str(audit_path), "key_write_rate_limit": None}


async def put(service: RunningService, key: dict[str, Any], sid: str = "AppDecrypt") -> None:
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[decrypt_for(sid)]))
    )


async def test_after_the_audit_file_is_deleted_the_next_put_is_recorded_at_the_path(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    await put(service, key, "First")
    audit_path.unlink()
    await put(service, key, "Second")
    assert [r["phase"] for r in records(audit_path)] == ["intent", "outcome"]
    assert all(r["changes"]["added"] == ["Second"] for r in records(audit_path))


async def test_after_a_logrotate_rename_the_next_put_is_recorded_at_the_path(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    await put(service, key, "First")
    rotated = audit_path.with_name("audit.log.1")
    audit_path.rename(rotated)
    await put(service, key, "Second")
    assert [r["changes"]["added"] for r in records(rotated)] == [["First"], ["First"]]
    assert [r["changes"]["added"] for r in records(audit_path)] == [["Second"], ["Second"]]


async def test_a_reload_after_rotation_creates_the_file_at_the_path_at_once(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    await put(service, key, "First")
    audit_path.rename(audit_path.with_name("audit.log.1"))
    service.server.reload()  # what SIGHUP calls
    await until(audit_path.exists)
    await put(service, key, "Second")
    assert [r["phase"] for r in records(audit_path)] == ["intent", "outcome"]


@pytest.mark.parametrize("settings_overrides", ["TORN"], indirect=True)
async def test_a_torn_line_left_by_a_killed_process_does_not_corrupt_the_next_put(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    await put(service, key)
    lines = audit_path.read_text().splitlines()
    assert lines[:2] == ['{"phase":"outcome"}', TORN]
    intent, outcome = (json.loads(line) for line in lines[2:])
    assert intent["phase"] == "intent" and intent["torn_record_before"] is True
    assert "previous_policy" in intent
    assert outcome["phase"] == "outcome" and "torn_record_before" not in outcome


async def test_a_line_torn_while_the_service_runs_does_not_corrupt_the_next_put(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    await put(service, key, "First")
    with audit_path.open("a") as f:  # a record cut short by a full disk
        f.write(TORN)
    await put(service, key, "Second")
    lines = audit_path.read_text().splitlines()
    assert lines[2] == TORN
    after = [json.loads(line) for line in lines[3:]]
    assert [r["phase"] for r in after] == ["intent", "outcome"]
    assert after[0]["torn_record_before"] is True and after[0]["changes"]["added"] == ["Second"]


async def test_a_lone_surrogate_in_the_previous_policy_is_recorded_in_the_intent(
    service: RunningService, kms: Any, key: dict[str, Any], audit_path: Path
) -> None:
    # Stored by another tool: the escape decodes to a lone surrogate in the change summary.
    stored = policy_for(extra=[decrypt_for("Old")]).replace('"Old"', '"\\ud800"')
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=stored)
    await put(service, key)
    intent, outcome = records(audit_path)
    assert intent["changes"]["removed"] == ["\ud800"] and intent["previous_policy"] == stored
    assert outcome["outcome"] == "OK"
