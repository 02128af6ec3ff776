"""Logging: one JSON object per line (or text for a terminal), written off the event loop.

Log records and access records go onto one queue; a background thread formats
and writes them, so a request never waits on a log write. Access records (one
per RPC) skip the logging module's per-record machinery: they are plain dicts
under the logger name `kms_policy_service.access`, enabled at INFO.
Credentials are never logged. In text format every control character (C0, DEL,
C1, U+2028/2029) and backslash in a logged value is escaped, values with spaces or
quotes are quoted, and the continuation lines of a traceback are indented, so no
caller-controlled value can forge a line or a field; JSON escapes them anyway.
"""

from __future__ import annotations

import atexit
import json
import json.encoder
import logging
import queue
import re
import sys
import threading
import time
from typing import IO, Any

ACCESS_LOGGER = "kms_policy_service.access"
_escape = json.encoder.encode_basestring_ascii
BATCH_SECONDS = 0.02
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT_ESCAPES.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
    )


def escape_text(value: object) -> str:
    """`value` on one line: control characters and backslashes as escapes."""
    return _CONTROL.sub(_escape_char, str(value))


def text_field(value: object) -> str:
    """A `key=value` value for text logs: escaped, and quoted if it holds a space or
    quote, so a caller's value can neither end the line nor pose as another field."""
    text = escape_text(value)
    if " " in text or '"' in text:
        return '"' + text.replace('"', '\\"') + '"'
    return text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, the message escaped onto one line; a traceback
    follows on lines indented so that none can be taken for a record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extra = record.exc_text or (
            self.formatException(record.exc_info) if record.exc_info else ""
        )
        for block in (extra, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                line += "".join("\n    " + escape_text(part) for part in block.splitlines() if part)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
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
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


class _Writer(threading.Thread):
    """Formats and writes queued log records and access dicts, in order."""

    def __init__(self, stream: IO[str], fmt: str) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.queue: queue.SimpleQueue[tuple[float, logging.LogRecord | dict[str, Any]] | None] = (
            queue.SimpleQueue()
        )
        self._stream = stream
        self._json = fmt == "json"
        self._formatter: logging.Formatter = JsonFormatter() if self._json else TextFormatter()

    def _line(self, created: float, item: logging.LogRecord | dict[str, Any]) -> str:
        if isinstance(item, logging.LogRecord):
            return self._formatter.format(item)
        if self._json:
            return _access_json(created, item)
        line = (
            f"{_timestamp(created)} access {text_field(item['method'])} {item['code']} "
            f"{item['duration_ms']}ms caller={text_field(item['caller'])} "
            f"key={text_field(item['key_arn'])} request_id={text_field(item['request_id'])} "
            f"peer={text_field(item.get('peer', ''))}"
        )
        if item.get("reason"):
            line += f" reason={text_field(item['reason'])}"
        return line

    def run(self) -> None:
        while True:
            first = self.queue.get()
            if first is not None:
                # Let a batch gather: one wake-up and one write per interval under load,
                # instead of a thread switch per record.
                time.sleep(BATCH_SECONDS)
            batch = [first]
            while not self.queue.empty():  # write what has piled up in one go
                batch.append(self.queue.get_nowait())
            lines = [self._line(*item) for item in batch if item is not None]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # nowhere to complain to
            if None in batch:
                return


_ACCESS_PREFIX = f',"level":"INFO","logger":"{ACCESS_LOGGER}"'


def _access_json(created: float, entry: dict[str, Any]) -> str:
    """The access record as one JSON object, built without json.dumps' generic machinery
    (this runs once per RPC; strings go through the C escaper, numbers through repr)."""
    parts = ['{"time":"', _timestamp(created), '"', _ACCESS_PREFIX]
    for key, value in entry.items():
        if isinstance(value, str):
            encoded = _escape(value)
        elif isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
            encoded = json.dumps(value, default=str)
        else:
            encoded = repr(value)
        parts.append(f',"{key}":{encoded}')
    parts.append("}")
    return "".join(parts)


class _Handoff(logging.Handler):
    """Puts records on the writer's queue, resolving what cannot cross threads lazily."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        record.msg = record.getMessage()
        record.args = None
        self._writer.queue.put((record.created, record))


_writer: _Writer | None = None
_access_enabled = False


def configure(level: str, fmt: str, stream: IO[str] | None = None) -> None:
    """Route every log record (and access record) through the background writer."""
    global _writer, _access_enabled
    flush()
    _writer = _Writer(stream or sys.stderr, fmt)
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(_writer)]
    root.setLevel(level.upper())
    _access_enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    # Third-party chatter (and botocore's debug logs, which can include request
    # headers) stays at WARNING whatever our level is.
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug", "moto", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def access_enabled() -> bool:
    return _access_enabled or (
        _writer is None and logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
    )


def access(entry: dict[str, Any]) -> None:
    """One access record. Without configure() (tests, embedding) it goes through logging."""
    if _writer is not None:
        _writer.queue.put((time.time(), entry))
    else:
        logging.getLogger(ACCESS_LOGGER).info(
            "%s %s", entry["method"], entry["code"], extra={"access": entry}
        )


def flush() -> None:
    """Write out everything queued and stop the writer (at exit)."""
    global _writer
    if _writer is not None:
        _writer.queue.put(None)
        _writer.join(5)
        _writer = None


atexit.register(flush)
