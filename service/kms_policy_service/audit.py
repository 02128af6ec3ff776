"""The audit trail: JSON lines recording every attempted key-policy change.

A Put that reaches KMS writes an "intent" record, flushed and fsynced before
KMS is called, and an "outcome" record after; a Put refused before that writes
one "refused" record. Unless policies are omitted, records carry the previous
and new policy text, so any change can be rolled back from the log alone.
If the intent cannot be written, the Put is refused (AUDIT_UNAVAILABLE): no
policy changes without a record.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from kms_policy_service import metrics
from kms_policy_service.errors import Unavailable

log = logging.getLogger(__name__)


def audit_unavailable(why: str) -> Unavailable:
    return Unavailable(
        "the audit log cannot be written, so no policy is changed; an operator must fix it",
        reason="AUDIT_UNAVAILABLE",
        metadata={"cause": why},
        retry_after=5.0,
    )


def change_summary(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, list[str]]:
    """Statements added, removed and changed, named by Sid (or by index where none)."""

    def by_name(doc: dict[str, Any] | None) -> dict[str, str]:
        if not doc:
            return {}
        statements = doc.get("Statement", [])
        if isinstance(statements, dict):
            statements = [statements]
        out: dict[str, str] = {}
        for i, s in enumerate(statements if isinstance(statements, list) else []):
            sid = s.get("Sid") if isinstance(s, dict) else None
            out[sid if isinstance(sid, str) else f"[{i}]"] = json.dumps(s, sort_keys=True)
        return out

    before, after = by_name(previous), by_name(new)
    return {
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n]),
    }


class AuditLog:
    """Appends records to a file (or stdout for `-`), durably, one writer at a time."""

    def __init__(
        self,
        path: str,
        *,
        omit_policies: bool = False,
    ) -> None:
        self.path = path
        self.omit_policies = omit_policies
        self._lock = asyncio.Lock()
        self._file: IO[str] | None = None
        self.error: str | None = None
        self._open()

    def _open(self) -> None:
        try:
            if self.path == "-":
                self._file = sys.stdout
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open
            self.error = None
        except OSError as exc:
            self._file = None
            self.error = exc.strerror or type(exc).__name__
            log.error("audit log %s cannot be opened: %s", self.path, self.error)

    @property
    def healthy(self) -> bool:
        """False when the log is known to be unwritable: Puts are refused before any KMS call."""
        if self._file is None:
            self._open()
        return self._file is not None

    def _write(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line)
        self._file.flush()
        if self._file is not sys.stdout:
            os.fsync(self._file.fileno())

    async def record(self, fields: dict[str, Any], *, durable: bool) -> None:
        """Append one record. With `durable`, a failure raises AUDIT_UNAVAILABLE."""
        entry = {
            "time": datetime.datetime.now(datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            **fields,
        }
        if self.omit_policies:
            entry.pop("previous_policy", None)
            entry.pop("new_policy", None)
        line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"
        async with self._lock:
            try:
                if not self.healthy:
                    raise OSError(self.error or "not open")
                await asyncio.to_thread(self._write, line)
            except OSError as exc:
                self.error = exc.strerror or str(exc)
                self._file = None
                metrics.audit_write_failures_total.inc()
                log.error("audit record not written: %s", self.error, extra={"audit": entry})
                if durable:
                    raise audit_unavailable(self.error) from exc

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None
