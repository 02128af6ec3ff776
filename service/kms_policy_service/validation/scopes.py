"""Scopes: what one caller may change in a key policy (you cannot grant what you do not own).

A scope (from an authorization rule) names the Sids the caller owns, and optionally
the principals and KMS actions its statements may name. The new policy is compared
with the key's current one, statement by statement (by Sid; Sid-less statements by
content): every statement added, changed or removed must carry an owned Sid, and
every statement added or changed may name only principals and actions within the
scope. Pure: documents in, findings (code OUT_OF_SCOPE) out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.grants import Grant, action_items, actions_matched, grants
from kms_policy_service.validation.wildcards import wildcard_match

CODE = "OUT_OF_SCOPE"


@dataclass(frozen=True)
class Scope:
    sids: tuple[str, ...]  # globs (* and ?), case-sensitive as Sids are
    principals: tuple[str, ...] | None = None  # globs over principal values; None: any
    actions: tuple[str, ...] | None = None  # KMS action patterns; None: any
    # The KMS actions `actions` covers, expanded once: a statement's action is then
    # judged by set operations, whatever it holds (no per-pattern matching loops).
    allowed_actions: frozenset[str] | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        if self.actions is not None:
            allowed = frozenset(a for p in self.actions for a in actions_matched(p))
            object.__setattr__(self, "allowed_actions", allowed)

    def findings(self, document: dict[str, Any], current: dict[str, Any]) -> list[Finding]:
        new, old = grants(document), grants(current)
        out: list[Finding] = []
        new_by_sid = {g.sid: g for g in new if g.sid is not None}
        old_by_sid = {g.sid: g for g in old if g.sid is not None}
        touched: list[Grant] = []
        for sid, g in new_by_sid.items():
            before = old_by_sid.get(sid)
            if before is not None and before.canonical == g.canonical:
                continue  # unchanged: anyone may keep it
            verb = "adds" if before is None else "changes"
            if not self._owns(sid):
                out.append(
                    _finding(
                        f"{g.path}.Sid", f"{verb} statement {sid!r}, outside the caller's Sids"
                    )
                )
            else:
                touched.append(g)
        for sid in old_by_sid:
            if sid not in new_by_sid and not self._owns(sid):
                out.append(
                    _finding("Statement", f"removes statement {sid!r}, outside the caller's Sids")
                )
        out.extend(_sidless_changes(new, old))
        for element in ("Version", "Id"):  # they belong to every statement, not one caller
            if current and document.get(element) != current.get(element):
                out.append(_finding(element, f"changes {element}, which a scoped caller cannot"))
        for g in touched:
            out.extend(self._within(g))
        return out

    def _owns(self, sid: str) -> bool:
        return any(wildcard_match(pattern, sid) for pattern in self.sids)

    def _within(self, g: Grant) -> list[Finding]:
        out = []
        if not g.allow and g.everyone and self.principals is None:
            # A Deny on everyone takes away what statements the caller does not own
            # grant: never within a scope (with `principals`, it is judged below).
            where = f"{g.path}.NotPrincipal" if g.not_principal else f"{g.path}.Principal"
            out.append(
                _finding(
                    where,
                    "a Deny on everyone reaches statements the caller does "
                    "not own: never within a scope",
                )
            )
        if self.principals is not None:
            if g.not_principal:
                out.append(
                    _finding(
                        f"{g.path}.NotPrincipal",
                        "NotPrincipal names everyone but some principals: never within a scope",
                    )
                )
            elif g.statement.get("Principal") == "*" and not self._principal_ok("*"):
                out.append(
                    _finding(f"{g.path}.Principal", '"*" is outside the caller\'s principals')
                )
            for p in g.principals:
                if not g.not_principal and not (
                    self._principal_ok(p.value) or self._principal_ok(p.canonical)
                ):
                    out.append(_finding(p.path, f"{p.value!r} is outside the caller's principals"))
        if self.actions is not None:
            if g.not_action:
                out.append(
                    _finding(
                        f"{g.path}.NotAction",
                        "NotAction grants every action but some: never within a scope",
                    )
                )
            else:
                assert self.allowed_actions is not None
                seen: set[str] = set()
                for path, pattern in action_items(g.statement, g.path):
                    if pattern in seen:  # a pattern repeated is judged once
                        continue
                    seen.add(pattern)
                    outside = sorted(actions_matched(pattern) - self.allowed_actions)
                    if outside:
                        out.append(
                            _finding(
                                path,
                                f"{pattern!r} covers {', '.join(outside)[:200]}, outside the "
                                "caller's actions",
                            )
                        )
        return out

    def _principal_ok(self, value: str) -> bool:
        assert self.principals is not None
        return any(wildcard_match(pattern, value) for pattern in self.principals)


def _sidless_changes(new: list[Grant], old: list[Grant]) -> list[Finding]:
    """Sid-less statements: those of the current policy must all stay, unchanged (in any
    position), and none may be added."""
    before = Counter(g.canonical for g in old if g.sid is None)
    after = Counter(g.canonical for g in new if g.sid is None)
    out = []
    seen: Counter[str] = Counter()
    for g in new:
        if g.sid is None:
            seen[g.canonical] += 1
            if seen[g.canonical] > before[g.canonical]:
                out.append(
                    _finding(
                        g.path,
                        "adds or changes a statement without a Sid, which a scoped caller cannot",
                    )
                )
    removed = sum((before - after).values())
    if removed:
        out.append(
            _finding(
                "Statement",
                f"removes or changes {removed} statement(s) without a "
                "Sid, which a scoped caller cannot",
            )
        )
    return out


def _finding(path: str, message: str) -> Finding:
    return Finding.error(CODE, path, message)
