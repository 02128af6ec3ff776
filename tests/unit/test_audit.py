"""Audit records: durable lines, the change summary, refusal when unwritable, rotation,
torn lines, any content, and bounded refused-attempt records."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kms_policy_service.audit import AuditLog, change_summary
from kms_policy_service.errors import Unavailable
from kms_policy_service.ratelimit.gcra import Rate
from tests.support.waiting import until


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


# -- rotation and deletion ---------------------------------------------------


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_after_a_rename_the_next_record_goes_to_a_new_file_at_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    path.rename(tmp_path / "audit.log.1")
    await log.record({"n": 2}, durable=True)
    assert [r["n"] for r in lines_of(tmp_path / "audit.log.1")] == [1]
    assert [r["n"] for r in lines_of(path)] == [2]


async def test_after_a_delete_the_next_record_goes_to_a_new_file_at_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "logs" / "audit.log"
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    shutil.rmtree(tmp_path / "logs")
    await log.record({"n": 2}, durable=True)
    assert [r["n"] for r in lines_of(path)] == [2]


async def test_after_copytruncate_records_start_the_emptied_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    shutil.copy(path, tmp_path / "audit.log.1")
    with path.open("r+") as f:
        f.truncate(0)
    await log.record({"n": 2}, durable=True)
    assert path.read_text().startswith("{") and [r["n"] for r in lines_of(path)] == [2]


async def test_reopen_creates_the_file_at_the_path_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    path.rename(tmp_path / "audit.log.1")
    log.reopen()
    await until(path.exists)
    await log.record({"n": 1}, durable=True)
    assert [r["n"] for r in lines_of(path)] == [1]
    assert (tmp_path / "audit.log.1").read_text() == ""


# -- torn last lines ---------------------------------------------------------


async def test_a_torn_last_line_found_at_open_is_terminated_and_the_next_record_says_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"phase":"intent","previous_pol')  # a SIGKILL mid-write
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    await log.record({"n": 2}, durable=True)
    torn, *rest = path.read_text().splitlines()
    assert torn == '{"phase":"intent","previous_pol'
    first, second = (json.loads(line) for line in rest)
    assert first["torn_record_before"] is True and first["n"] == 1
    assert "torn_record_before" not in second


async def test_a_line_torn_while_the_file_is_open_is_terminated_before_the_next_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    with path.open("a") as f:  # what a write cut short by a full disk leaves
        f.write('{"n":')
    await log.record({"n": 2}, durable=True)
    good, torn, after = path.read_text().splitlines()
    assert json.loads(good)["n"] == 1 and torn == '{"n":'
    assert json.loads(after)["n"] == 2 and json.loads(after)["torn_record_before"] is True


async def test_a_file_ending_in_a_newline_gets_no_torn_mark(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"n":0}\n')
    log = AuditLog(str(path))
    await log.record({"n": 1}, durable=True)
    assert [("torn_record_before" in r) for r in lines_of(path)] == [False, False]


async def test_a_device_or_pipe_path_is_written_without_fsync_or_tail_check() -> None:
    log = AuditLog("/dev/null")
    await log.record({"n": 1}, durable=True)
    await log.record({"n": 2}, durable=True)
    assert log.error is None


# -- content never stops a record -----------------------------------------------


async def test_a_lone_surrogate_in_any_field_is_written_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    changes = {"added": ["\ud800"], "removed": [], "changed": []}
    await log.record({"changes": changes, "new_policy": "caf\u00e9 \udfff"}, durable=True)
    (line,) = lines_of(path)
    assert line["changes"] == changes and line["new_policy"] == "caf\u00e9 \udfff"
    assert path.read_bytes().isascii()


async def test_a_lone_surrogate_on_stdout_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog("-")
    await log.record({"sid": "\ud800"}, durable=True)
    assert json.loads(capsys.readouterr().out)["sid"] == "\ud800"


# -- refused attempts are bounded -------------------------------------------------


REFUSED = {"phase": "refused", "outcome": "PERMISSION_DENIED", "reason": "CALLER_NOT_AUTHORIZED"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_refusals_past_a_callers_burst_are_dropped_then_summarised(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    clock = FakeClock()
    log = AuditLog(str(path), refusal_rate=Rate(1, 3), refusal_total_rate=None, clock=clock)
    for i in range(10):
        await log.record_refusal({**REFUSED, "n": i}, caller="mallory", authorized=False)
    assert [r["n"] for r in lines_of(path)] == [0, 1, 2]
    clock.now += 1.0  # one token back
    await log.record_refusal({**REFUSED, "n": 10}, caller="mallory", authorized=False)
    *_, summary, written = lines_of(path)
    assert summary["phase"] == "refusals_dropped" and summary["dropped"] == 7
    assert summary["callers"] == [{"caller": "mallory", "dropped": 7}]
    assert summary["since"] <= summary["until"] <= written["time"] and written["n"] == 10


async def test_one_callers_flood_leaves_room_for_other_callers(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), refusal_rate=Rate(1, 2), refusal_total_rate=Rate(1, 100))
    for _ in range(50):
        await log.record_refusal(
            {**REFUSED, "caller": "mallory"}, caller="mallory", authorized=False
        )
    await log.record_refusal({**REFUSED, "caller": "alice"}, caller="alice", authorized=False)
    *_, summary, last = lines_of(path)
    assert [r.get("caller") for r in lines_of(path)] == ["mallory", "mallory", None, "alice"]
    assert summary["dropped"] == 48 and last["caller"] == "alice"


async def test_the_total_bucket_bounds_refusals_from_many_callers(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), refusal_rate=Rate(1, 1), refusal_total_rate=Rate(1, 5))
    for i in range(100):
        await log.record_refusal(REFUSED, caller=f"caller-{i}", authorized=False)
    assert len(lines_of(path)) == 5
    assert len(log.refusals.dropped.callers) == 20 and log.refusals.dropped.other_callers == 75


async def test_caller_buckets_are_bounded_in_number(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"), refusal_callers=10, refusal_total_rate=None)
    for i in range(100):
        await log.record_refusal(REFUSED, caller=f"caller-{i}" * 100, authorized=False)
    assert len(log.refusals._store) <= 11


async def test_the_summary_is_written_after_a_delay_if_no_refusal_follows(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), refusal_rate=Rate(1, 1), summary_delay=0.01)
    for _ in range(4):
        await log.record_refusal(REFUSED, caller="mallory", authorized=False)
    await until(lambda: len(lines_of(path)) == 2)
    assert lines_of(path)[1]["dropped"] == 3


async def test_close_writes_the_pending_summary(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), refusal_rate=Rate(1, 1))
    for _ in range(3):
        await log.record_refusal(REFUSED, caller="mallory", authorized=False)
    log.close()
    assert [r["phase"] for r in lines_of(path)] == ["refused", "refusals_dropped"]


async def test_rates_of_none_write_every_refusal(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), refusal_rate=None, refusal_total_rate=None)
    for _ in range(50):
        await log.record_refusal(REFUSED, caller="mallory", authorized=True)
    assert len(lines_of(path)) == 50


async def test_an_unauthorized_callers_policy_is_kept_as_a_prefix_with_length_and_hash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path), unauthorized_policy_bytes=1024)
    policy = '{"Statement":"' + "x" * 30_000 + '"}'
    junk = "e" * 60_000
    await log.record_refusal(
        {**REFUSED, "new_policy": policy, "expected_etag": junk}, caller="m", authorized=False
    )
    (line,) = lines_of(path)
    assert "new_policy" not in line and line["new_policy_prefix"] == policy[:1024]
    assert line["new_policy_bytes"] == len(policy)
    assert line["new_policy_sha256"] == hashlib.sha256(policy.encode()).hexdigest()
    assert line["expected_etag"] == junk[:512] and line["truncated_fields"] == ["expected_etag"]
    assert line["authorized"] is False
    assert len(path.read_bytes()) < 3 * 1024


async def test_an_unauthorized_callers_short_policy_is_kept_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    await log.record_refusal({**REFUSED, "new_policy": "{}"}, caller="m", authorized=False)
    assert lines_of(path)[0]["new_policy"] == "{}"


async def test_an_authorized_callers_refused_policy_is_kept_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    policy = "x" * 30_000
    await log.record_refusal({**REFUSED, "new_policy": policy}, caller="admin", authorized=True)
    (line,) = lines_of(path)
    assert line["new_policy"] == policy and line["authorized"] is True
    assert "new_policy_prefix" not in line
