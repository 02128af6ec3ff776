"""Logs: JSON lines (or text), written by a background writer, access records included."""

from __future__ import annotations

import io
import json
import logging

import pytest

from kms_policy_service import logs

ENTRY = {
    "method": "GetKeyPolicy",
    "code": "OK",
    "reason": "",
    "duration_ms": 1.5,
    "caller": "local",
    "peer": "ipv4:127.0.0.1:1",
    "key_arn": "arn:k",
    "request_id": "r1",
    "kms_attempts": 1,
}


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    logs.flush()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_for_records_and_access(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    logging.getLogger("kms_policy_service.server").info("serving", extra={"port": 5})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("kms_policy_service.servicer").exception("failed")
    logs.access(dict(ENTRY))
    logs.flush()
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["message"], first["port"], first["level"]) == ("serving", 5, "INFO")
    assert "ValueError: boom" in second["exception"]
    assert third["logger"] == "kms_policy_service.access" and third["request_id"] == "r1"
    assert third["time"].endswith("Z")


def test_text_format_for_a_terminal(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", stream=out)
    logs.access(dict(ENTRY))
    logs.flush()
    line = out.getvalue().strip()
    assert "access GetKeyPolicy OK 1.5ms caller=local key=arn:k request_id=r1" in line


def test_access_records_follow_the_level(restore_logging: object) -> None:
    logs.configure("WARNING", "json", stream=io.StringIO())
    assert not logs.access_enabled()
    logs.configure("INFO", "json", stream=io.StringIO())
    assert logs.access_enabled()


def test_access_records_escape_hostile_strings(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    logs.access(
        {**ENTRY, "request_id": 'quote" and \\ newline\n and é', "duration_ms": float("1e-7")}
    )
    logs.flush()
    record = json.loads(out.getvalue())
    assert record["request_id"] == 'quote" and \\ newline\n and é'
    assert record["kms_attempts"] == 1 and record["duration_ms"] == 1e-7


FORGED = "\n2030-01-01T00:00:00.000Z access PutKeyPolicy OK 1ms caller=admin"
HOSTILE = ["\n", "\r", "\x00", "\x1b[2J", "\x7f", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]


def test_text_access_records_escape_every_control_character(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", stream=out)
    for field in ("caller", "peer", "key_arn", "request_id", "method", "reason"):
        for char in HOSTILE:
            logs.access({**ENTRY, field: f"cn:x{char}{FORGED}"})
    logs.flush()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 6 * len(HOSTILE) + 1  # one line per record
    for line in lines[:-1]:
        assert line.isprintable(), line  # no C0, DEL, C1, U+2028/2029 left
        assert not line.startswith("2030") and line[24:32] == " access ", line


def test_text_access_values_cannot_pose_as_other_fields(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", stream=out)
    logs.access({**ENTRY, "caller": 'cn:x key=arn:forged "q" \\n', "reason": "R"})
    logs.flush()
    line = out.getvalue().strip()
    assert 'caller="cn:x key=arn:forged \\"q\\" \\\\n" key=arn:k request_id=r1' in line
    assert line.endswith(" peer=ipv4:127.0.0.1:1 reason=R")


def test_text_log_messages_stay_on_one_line(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", stream=out)
    log = logging.getLogger("kms_policy_service.servicer")
    log.warning("caller %s refused", f"cn:x\r{FORGED}\u2028")
    try:
        raise ValueError(f"bad caller{FORGED}")
    except ValueError:
        log.exception("failed for %s", f"a{FORGED}")
    logs.flush()
    lines = out.getvalue().splitlines()
    assert "WARNING kms_policy_service.servicer: caller cn:x\\r\\n2030-01-01T" in lines[0]
    assert lines[0].endswith("caller=admin\\u2028 refused")
    assert "ERROR kms_policy_service.servicer: failed for a\\n2030" in lines[1]
    # The traceback follows on indented lines: none of them can pass for a record.
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[2:])
    assert "    ValueError: bad caller" in lines
    assert "    2030-01-01T00:00:00.000Z access PutKeyPolicy OK 1ms caller=admin" in lines


def test_json_records_escape_every_control_character(restore_logging: object) -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", stream=out)
    hostile = "".join(HOSTILE) + FORGED
    logs.access({**ENTRY, "caller": hostile, "peer": hostile, "reason": hostile})
    logging.getLogger("kms_policy_service.servicer").warning("caller %s", hostile)
    logs.flush()
    text = out.getvalue()
    lines = text.split("\n")
    assert len(lines) == 3 and lines[-1] == ""
    assert all(line.isprintable() and line.isascii() for line in lines)
    access, record = (json.loads(line) for line in lines[:2])
    assert access["caller"] == access["peer"] == access["reason"] == hostile
    assert record["message"] == f"caller {hostile}"
