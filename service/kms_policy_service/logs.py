"""Logging setup: one JSON object per line (or text for a terminal); credentials never logged.

Records are handed to a background thread (QueueHandler -> QueueListener) that
formats and writes them, so the event loop never waits on a log write.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import IO, Any

_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_listener: logging.handlers.QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED:
                if isinstance(value, dict):
                    entry.update(value)
                else:
                    entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Keeps the record as it is (the listener formats it), only resolving its message."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.exc_info:  # tracebacks cannot cross threads lazily: render them now
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg = record.getMessage()
        record.args = None
        return record


class _ExceptionText(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_text:
            entry = json.loads(text)
            entry["exception"] = record.exc_text
            text = json.dumps(entry, default=str)
        return text


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Route every log record through a background writer to `stream` (stderr)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_ExceptionText())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(records)]
    root.setLevel(level.upper())
    # Third-party chatter (and botocore's debug logs, which can include request
    # headers) stays at WARNING whatever our level is.
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug", "moto", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush() -> None:
    """Write out everything queued (at exit, and before a clean stop)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(flush)
