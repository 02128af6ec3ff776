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
