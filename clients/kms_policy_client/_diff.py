"""Statement-level differences between two policy documents."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["StatementChange", "render", "statement_diff"]


@dataclass(frozen=True)
class StatementChange:
    op: str  # "added", "removed", "changed"
    name: str  # the Sid, or [index] for statements without one
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _statements(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    raw = doc.get("Statement", [])
    items = [raw] if isinstance(raw, dict) else raw if isinstance(raw, list) else []
    out: dict[str, dict[str, Any]] = {}
    for i, s in enumerate(items):
        sid = s.get("Sid") if isinstance(s, dict) else None
        out[sid if isinstance(sid, str) else f"[{i}]"] = s
    return out


def statement_diff(before: dict[str, Any], after: dict[str, Any]) -> list[StatementChange]:
    """Changes from `before` to `after`, statements matched by Sid (or position)."""
    old, new = _statements(before), _statements(after)
    changes = [StatementChange("removed", n, old[n], None) for n in old if n not in new]
    for name, statement in new.items():
        if name not in old:
            changes.append(StatementChange("added", name, None, statement))
        elif old[name] != statement:
            changes.append(StatementChange("changed", name, old[name], statement))
    for key in ("Version", "Id"):
        if before.get(key) != after.get(key):
            changes.append(
                StatementChange("changed", key, {key: before.get(key)}, {key: after.get(key)})
            )
    return changes


def _lines(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines() if value is not None else []


def render(changes: list[StatementChange]) -> str:
    """Human-readable: one header per statement and a unified diff of its JSON."""
    out: list[str] = []
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for c in changes:
        out.append(f"{marks[c.op]} {c.op} {c.name}")
        diff = difflib.unified_diff(_lines(c.before), _lines(c.after), lineterm="", n=2)
        out.extend("    " + line for line in list(diff)[2:])
    return "\n".join(out)
