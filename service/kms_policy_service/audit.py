"""The audit trail: JSON lines recording every attempted key-policy change.

A Put that reaches KMS writes an "intent" record, flushed and fsynced before
KMS is called, and an "outcome" record after; a Put refused before that writes
one "refused" record. Unless policies are omitted, records carry the previous
and new policy text, so any change can be rolled back from the log alone.
If the intent cannot be written, the Put is refused (AUDIT_UNAVAILABLE): no
policy changes without a record.

Rotation: before each record the file held open is compared (device, inode)
with the configured path; when the path was renamed away or deleted, the path is
reopened (created) and the record goes there. `reopen()` (SIGHUP) does the same
at once. copytruncate also works: the file is opened with O_APPEND.

Torn lines: a record cut short (a full disk, a SIGKILL mid-write) is never
glued to the next one. Before appending, a file that does not end with a newline
gets one, and the next record says `"torn_record_before": true`.

Refused attempts are bounded (anyone can cause them): token buckets per caller
and in total decide which are written; the rest are counted and summarised in a
later "refusals_dropped" record. A caller not authorized to write keeps at most a
bounded prefix of the attempted policy (with its length and SHA-256) in the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kms_policy_service import metrics
from kms_policy_service.errors import ServiceError, Unavailable
from kms_policy_service.ratelimit.gcra import Bucket, MemoryStore
from kms_policy_service.settings import (
    DEFAULT_REFUSAL_CALLERS,
    DEFAULT_REFUSAL_RATE,
    DEFAULT_REFUSAL_TOTAL_RATE,
    DEFAULT_UNAUTHORIZED_POLICY_BYTES,
    Rate,
)

log = logging.getLogger(__name__)

SUMMARY_DELAY_SECONDS = 10.0  # at the latest, after the first drop, the summary is written
UNAUTHORIZED_FIELD_CHARS = 512  # any other string an unauthorized caller chose
SUMMARY_MAX_CALLERS = 20  # callers named in one summary; the rest are only counted
_TAIL_PROBE = 1  # bytes read back to see whether the file ends with a newline


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


def _utc_now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def encode_record(entry: dict[str, Any]) -> bytes:
    """One JSON line, pure ASCII: content (a lone surrogate, bytes) can never make it fail."""
    return (json.dumps(entry, separators=(",", ":"), ensure_ascii=True, default=str) + "\n").encode(
        "ascii"
    )


class _AuditFile:
    """The configured path, held open for appending; followed across rotation and deletion.

    Only one thread uses it at a time (AuditLog's lock).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._readable = False
        self._regular = False  # a regular file (not a pipe or device): has a tail, can fsync
        self._torn = False  # the next record must say a torn record precedes it
        self._unterminated = False  # our own last write stopped mid-line
        self.reopen_requested = False

    @property
    def is_open(self) -> bool:
        return self.path == "-" or self._fd is not None

    def open(self, cause: str = "") -> None:
        """Open (create) the path; raises OSError. `cause` names a reopen, for the metric."""
        if self.path == "-":
            return
        self.close()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            # Read access only to look at the last byte (torn-line check).
            self._fd, self._readable = os.open(self.path, flags | os.O_RDWR, 0o666), True
        except PermissionError:
            self._fd, self._readable = os.open(self.path, flags | os.O_WRONLY, 0o666), False
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._torn = self._unterminated = False  # they were about the file we left
        self.reopen_requested = False
        if cause:
            metrics.child(metrics.audit_reopens_total, cause).inc()
            log.info("audit log %s reopened (%s)", self.path, cause)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):  # nothing more can be done for this descriptor
                os.close(fd)

    def follow(self) -> None:
        """Reopen when asked to, when the path is gone, or when it names another file."""
        if self.path == "-":
            return
        if self._fd is None:
            self.open()
            return
        cause = "signal" if self.reopen_requested else ""
        self.reopen_requested = False
        if not cause:
            held = os.fstat(self._fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                cause = "deleted"
            else:
                if (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
                    cause = "moved"
        if cause:
            self.open(cause)

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Write the entries as lines, then fsync; raises OSError (nothing else)."""
        self.follow()
        newline = self._needs_newline()
        if newline and not self._torn:
            self._torn = True
            metrics.audit_torn_lines_total.inc()
            log.warning("audit log %s ends in a torn record; it is terminated", self.path)
        first = entries[0]
        if self._torn:  # right after the time, where a reader of the line sees it first
            first = {"time": first.get("time"), "torn_record_before": True, **first}
        data = (b"\n" if newline else b"") + b"".join(
            encode_record(e) for e in (first, *entries[1:])
        )
        self._write_all(data)
        self._torn = False

    def _needs_newline(self) -> bool:
        if self._fd is None or not self._readable or not self._regular:
            return self._unterminated
        size = os.fstat(self._fd).st_size
        return size > 0 and os.pread(self._fd, _TAIL_PROBE, size - _TAIL_PROBE) != b"\n"

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:  # stdout
            self._unterminated = True  # until the flush below succeeds
            sys.stdout.write(data.decode("ascii"))
            sys.stdout.flush()
            self._unterminated = False
            return
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError:
                self._unterminated = self._unterminated or len(view) < len(data)
                raise
            view = view[written:]
        self._unterminated = False
        if self._regular:  # fsync fails on pipes (--audit-log /dev/stdout)
            os.fsync(self._fd)


@dataclass
class _Dropped:
    """Refused-attempt records not written since the last summary."""

    count: int = 0
    since: str = ""
    until: str = ""
    callers: dict[str, int] = field(default_factory=dict)
    other_callers: int = 0  # drops from callers beyond SUMMARY_MAX_CALLERS

    def add(self, caller: str, now: str) -> None:
        self.count += 1
        self.since = self.since or now
        self.until = now
        name = caller[:UNAUTHORIZED_FIELD_CHARS]
        if name in self.callers or len(self.callers) < SUMMARY_MAX_CALLERS:
            self.callers[name] = self.callers.get(name, 0) + 1
        else:
            self.other_callers += 1

    def record(self) -> dict[str, Any]:
        return {
            "phase": "refusals_dropped",
            "dropped": self.count,
            "since": self.since,
            "until": self.until,
            "callers": [
                {"caller": name, "dropped": n}
                for name, n in sorted(self.callers.items(), key=lambda item: -item[1])
            ],
            "other_callers_dropped": self.other_callers,
        }


class RefusalBounds:
    """Decides which refused-attempt records are written: a GCRA bucket per caller and one
    for everyone; what is dropped is counted for a summary."""

    def __init__(
        self,
        per_caller: Rate | None,
        total: Rate | None,
        *,
        max_callers: int = DEFAULT_REFUSAL_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_caller = per_caller
        self._total = total
        self._store = MemoryStore(clock, max_buckets=max_callers + 1)  # + the total bucket
        self.dropped = _Dropped()

    def admit(self, caller: str, now: str) -> bool:
        buckets = []
        if self._per_caller is not None:
            # Hashed: a caller's name can be kilobytes long and there are many of them.
            digest = hashlib.sha256(caller.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            buckets.append(Bucket(f"caller:{digest}", self._per_caller))
        if self._total is not None:
            buckets.append(Bucket("total", self._total))
        if not buckets:
            return True
        decision = self._store.reserve(buckets, 0.0)
        if decision.allowed:
            return True
        which = (
            "total" if decision.bucket is not None and decision.bucket.name == "total" else "caller"
        )
        metrics.child(metrics.audit_refusals_dropped_total, which).inc()
        self.dropped.add(caller, now)
        return False

    def take_summary(self) -> dict[str, Any] | None:
        """The summary record of what was dropped since the last one, if anything was."""
        if not self.dropped.count:
            return None
        summary, self.dropped = self.dropped.record(), _Dropped()
        return summary


def bound_unauthorized(entry: dict[str, Any], policy_bytes: int) -> dict[str, Any]:
    """What a caller not authorized to write may put in the log: a policy prefix with its
    length and SHA-256, and every other string cut to UNAUTHORIZED_FIELD_CHARS."""
    out: dict[str, Any] = {}
    cut: list[str] = []
    for name, value in entry.items():
        if name == "new_policy" and isinstance(value, str):
            raw = value.encode("utf-8", "surrogatepass")
            if len(raw) <= policy_bytes:
                out[name] = value
                continue
            out["new_policy_prefix"] = raw[:policy_bytes].decode("utf-8", "replace")
            out["new_policy_bytes"] = len(raw)
            out["new_policy_sha256"] = hashlib.sha256(raw).hexdigest()
            metrics.audit_policies_truncated_total.inc()
        elif isinstance(value, str) and len(value) > UNAUTHORIZED_FIELD_CHARS:
            out[name] = value[:UNAUTHORIZED_FIELD_CHARS]
            cut.append(name)
        else:
            out[name] = value
    if cut:
        out["truncated_fields"] = cut
    return out


class AuditLog:
    """Appends records to a file (or stdout for `-`), durably, one writer at a time."""

    def __init__(
        self,
        path: str,
        *,
        omit_policies: bool = False,
        refusal_rate: Rate | None = DEFAULT_REFUSAL_RATE,
        refusal_total_rate: Rate | None = DEFAULT_REFUSAL_TOTAL_RATE,
        refusal_callers: int = DEFAULT_REFUSAL_CALLERS,
        unauthorized_policy_bytes: int = DEFAULT_UNAUTHORIZED_POLICY_BYTES,
        summary_delay: float = SUMMARY_DELAY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.omit_policies = omit_policies
        self.unauthorized_policy_bytes = unauthorized_policy_bytes
        self.refusals = RefusalBounds(
            refusal_rate, refusal_total_rate, max_callers=refusal_callers, clock=clock
        )
        self._summary_delay = summary_delay
        self._summary_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._file = _AuditFile(path)
        self.error: str | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._file.open()
            self.error = None
        except OSError as exc:
            self.error = exc.strerror or type(exc).__name__
            log.error("audit log %s cannot be opened: %s", self.path, self.error)

    @property
    def is_open(self) -> bool:
        return self._file.is_open

    @property
    def healthy(self) -> bool:
        """False when the log is known to be unwritable: Puts are refused before any KMS call."""
        if not self._file.is_open and not self._lock.locked():
            self._open()
        return self._file.is_open

    def reopen(self) -> None:
        """Reopen (create) the configured path now: call on SIGHUP after rotating the file.

        Safe in a signal handler: it only schedules the reopen, which waits for a write in
        progress; without a running loop, the next record reopens.
        """
        self._file.reopen_requested = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._append([]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def record(self, fields: dict[str, Any], *, durable: bool) -> None:
        """Append one record. With `durable`, a failure raises AUDIT_UNAVAILABLE."""
        await self._append([self._entry(fields)], durable=durable)

    async def record_refusal(
        self, fields: dict[str, Any], *, caller: str, authorized: bool
    ) -> None:
        """Append one refused-attempt record if the refusal bounds admit it (never raises).

        `authorized`: whether the caller had been authorized to write when it was refused;
        if not, the record keeps only a bounded part of what the caller sent.
        """
        entry = self._entry({**fields, "authorized": authorized})
        if not self.refusals.admit(caller, entry["time"]):
            self._schedule_summary()
            return
        if not authorized:
            entry = bound_unauthorized(entry, self.unauthorized_policy_bytes)
        summary = self.refusals.take_summary()
        await self._append([self._entry(summary), entry] if summary else [entry])

    def _entry(self, fields: dict[str, Any]) -> dict[str, Any]:
        entry = {"time": _utc_now(), **fields}
        if self.omit_policies:
            entry.pop("previous_policy", None)
            entry.pop("new_policy", None)
        return entry

    def _schedule_summary(self) -> None:
        """Write the drop summary later even if no other refusal is ever written."""
        if self._summary_timer is None:
            loop = asyncio.get_running_loop()
            self._summary_timer = loop.call_later(self._summary_delay, self._flush_summary_soon)

    def _flush_summary_soon(self) -> None:
        self._summary_timer = None
        summary = self.refusals.take_summary()
        if summary is not None:
            task = asyncio.get_running_loop().create_task(self._append([self._entry(summary)]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _append(self, entries: list[dict[str, Any]], *, durable: bool = False) -> None:
        """Write the entries (none: only follow the path); a failure raises if `durable`."""
        async with self._lock:
            try:
                if entries:
                    await asyncio.to_thread(self._file.append, entries)
                else:
                    await asyncio.to_thread(self._file.follow)
                self.error = None
            except OSError as exc:
                self.error = exc.strerror or str(exc)
                if entries:
                    metrics.audit_write_failures_total.inc(len(entries))
                    log.error(
                        "audit record not written: %s", self.error, extra={"audit": entries[-1]}
                    )
                else:
                    log.error("audit log %s cannot be reopened: %s", self.path, self.error)
                if durable:
                    raise audit_unavailable(self.error) from exc

    def close(self) -> None:
        """Write any pending drop summary, then close the file."""
        for task in self._tasks:
            task.cancel()
        if self._summary_timer is not None:
            self._summary_timer.cancel()
            self._summary_timer = None
        summary = self.refusals.take_summary()
        if summary is not None:
            try:
                self._file.append([self._entry(summary)])
            except OSError as exc:
                log.error("audit summary not written: %s", exc.strerror or exc)
        self._file.close()


class PutAudit:
    """The audit life of one PutKeyPolicy, one method per transition it really has::

        (opened) --refused--> done            nothing reached KMS; bounded per caller
        (opened) --intent--> sending          fsynced before KMS is called
        sending --outcome--> done             KMS answered: OK or its error
        sending --unknown--> unknown          sent, no answer: may or may not have applied
        unknown --settled--> done             the policy read back says which
        (opened)/sending --cancelled-->       the caller left before KMS was asked

    With no log (or a validate_only Put) every transition only moves the state.
    """

    def __init__(self, log: AuditLog | None, **fields: Any) -> None:
        self._log = log
        # put_id ties this Put's records together: the request id is the caller's to
        # choose, so two Puts (or a forger) may share one.
        self._fields: dict[str, Any] = {
            "action": "PutKeyPolicy",
            "put_id": os.urandom(12).hex(),
            **fields,
        }
        self.state = "opened"
        self.authorized = False

    @property
    def enabled(self) -> bool:
        return self._log is not None

    def note(self, **fields: Any) -> None:
        """Facts learnt on the way (key ARN, etags) that every later record carries."""
        self._fields.update(fields)

    def get(self, name: str) -> Any:
        return self._fields.get(name)

    async def refused(self, error: ServiceError) -> None:
        """Refused before the intent: anyone can cause these, so their records are bounded."""
        self.state = "done"
        if self._log is not None:
            await self._log.record_refusal(
                {**self._fields, "phase": "refused", **_failure(error)},
                caller=self._fields.get("caller", ""),
                authorized=self.authorized,
            )

    async def intent(self, *, previous_policy: str, changes: dict[str, list[str]]) -> None:
        """Durably, before KMS is called: raises AUDIT_UNAVAILABLE if it cannot be written."""
        self.note(changes=changes, previous_policy=previous_policy)
        if self._log is not None:
            await self._log.record({**self._fields, "phase": "intent"}, durable=True)
        self.state = "sending"

    async def sending(self) -> None:
        """The request is about to go to KMS (also without an intent record)."""
        self.state = "sending"

    async def outcome(self, error: ServiceError | None) -> None:
        self.state = "done"
        if self._log is not None:
            result = {"outcome": "OK", "reason": ""} if error is None else _failure(error)
            await self._log.record({**self._fields, "phase": "outcome", **result}, durable=False)

    async def unknown(self, what: str) -> None:
        self.state = "unknown"
        if self._log is not None:
            await self._log.record(
                {
                    **self._fields,
                    "phase": "unknown",
                    "outcome": "UNKNOWN",
                    "reason": f"{what} after the request was sent to KMS",
                    "message": "the policy may or may not have changed; see the settled record",
                },
                durable=False,
            )

    async def settled(self, outcome: str, message: str) -> None:
        self.state = "done"
        if self._log is not None:
            keep = ("put_id", "request_id", "caller", "action", "key_arn", "policy_name")
            await self._log.record(
                {
                    **{k: self._fields.get(k, "") for k in keep},
                    "phase": "settled",
                    "new_etag": self._fields.get("new_etag", ""),
                    "previous_etag": self._fields.get("previous_etag", ""),
                    "outcome": outcome,
                    "message": message,
                },
                durable=False,
            )

    async def cancelled(self) -> None:
        """The caller left; only a Put whose intent is on disk needs an outcome."""
        if self.state == "sending" and self._log is not None and "previous_policy" in self._fields:
            await self._log.record(
                {**self._fields, "phase": "outcome", "outcome": "CANCELLED", "reason": "CANCELLED"},
                durable=False,
            )
        self.state = "done"

    async def failed(self, error: ServiceError) -> None:
        """Whatever state the Put was in when `error` ended it."""
        if self.state == "opened":
            await self.refused(error)
        elif self.state == "sending":
            await self.outcome(error)


MAX_RECORDED_VIOLATIONS = 20


def _failure(error: ServiceError) -> dict[str, Any]:
    """outcome, reason, message and (bounded) the violations the caller was told of."""
    out: dict[str, Any] = {
        "outcome": error.code.name,
        "reason": error.reason,
        "message": error.message[:1024],
    }
    violations = [
        {"check": v.reason, "path": v.path[:256], "description": v.description[:512]}
        for v in error.field_violations
    ] + [
        {"check": p.type, "path": p.subject[:256], "description": p.description[:512]}
        for p in error.precondition_violations
    ]
    if violations:
        out["violations"] = violations[:MAX_RECORDED_VIOLATIONS]
        if len(violations) > MAX_RECORDED_VIOLATIONS:
            out["violations_left_out"] = len(violations) - MAX_RECORDED_VIOLATIONS
    return out
