"""What each statement of a key policy grants, read with IAM's semantics.

For guardrails and scopes: who a statement names (principals, with their JSON
paths and accounts), whether it is public, and which KMS actions it covers
(through wildcards, and as the complement of a NotAction). IAM action names are
case-insensitive and take `*` and `?`; principal ARNs are case-sensitive, and a
bare 12-digit account means that account's root.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kms_policy_service.validation.document import KMS_ACTIONS, as_list, iter_statements
from kms_policy_service.validation.keys import ACCOUNT_ID_RE
from kms_policy_service.validation.wildcards import WildcardTexts

ALL_KMS_ACTIONS = frozenset(f"kms:{a}".lower() for a in KMS_ACTIONS)
_ACTION_TEXTS = WildcardTexts(sorted(ALL_KMS_ACTIONS), ignore_case=True)
_ARN_ACCOUNT = re.compile(r"arn:[\w-]+:(?:iam|sts)::([0-9]{12}):.+", re.DOTALL)


@dataclass(frozen=True)
class Principal:
    path: str  # e.g. Statement[1].Principal.AWS[0]
    kind: str  # AWS, Service or Federated
    value: str

    @property
    def account(self) -> str | None:
        """The AWS account an AWS (or Federated ARN) principal belongs to; None for `*`
        and services."""
        if self.kind == "Service":
            return None
        if ACCOUNT_ID_RE.fullmatch(self.value):
            return self.value
        m = _ARN_ACCOUNT.fullmatch(self.value)
        return m[1] if m else None

    @property
    def canonical(self) -> str:
        """`123456789012` and `arn:aws:iam::123456789012:root` name the same principal."""
        if self.kind == "AWS" and ACCOUNT_ID_RE.fullmatch(self.value):
            return f"arn:aws:iam::{self.value}:root"
        return self.value


@dataclass(frozen=True)
class Grant:
    path: str  # Statement[i]
    statement: dict[str, Any]
    sid: str | None
    allow: bool
    principals: tuple[Principal, ...]  # what Principal names (NotPrincipal: what it excludes)
    everyone: bool  # Principal "*" / {"AWS": "*"}, or NotPrincipal (all but some)
    not_principal: bool
    actions: frozenset[str]  # lower-case KMS actions it covers (complement for NotAction)
    not_action: bool

    @property
    def canonical(self) -> str:
        return canonical_statement(self.statement)


def canonical_statement(statement: dict[str, Any]) -> str:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def actions_matched(pattern: str) -> frozenset[str]:
    """The KMS actions an action pattern names (`*` and `kms:*` name them all)."""
    if pattern == "*":
        return ALL_KMS_ACTIONS
    return frozenset(_ACTION_TEXTS.matching(pattern.lower()))


def _principals(value: Any, path: str) -> Iterator[Principal]:
    if not isinstance(value, dict):
        return
    for kind, entries in value.items():
        if not isinstance(entries, (str, list)):
            continue
        items = [entries] if isinstance(entries, str) else entries
        for i, item in enumerate(items):
            if isinstance(item, str):
                item_path = f"{path}.{kind}" if isinstance(entries, str) else f"{path}.{kind}[{i}]"
                yield Principal(item_path, kind, item)


def grants(document: dict[str, Any]) -> list[Grant]:
    """Every statement of a parsed (valid) document, as what it grants."""
    out = []
    for path, s in iter_statements(document):
        not_principal = "NotPrincipal" in s
        key = "NotPrincipal" if not_principal else "Principal"
        raw = s.get(key)
        principals = tuple(_principals(raw, f"{path}.{key}"))
        # "*" as any principal type (AWS or Service) names everyone.
        everyone = not_principal or raw == "*" or any(p.value == "*" for p in principals)
        not_action = "NotAction" in s
        listed = as_list(s.get("NotAction" if not_action else "Action", []))
        named: frozenset[str] = frozenset()
        for pattern in {a for a in listed if isinstance(a, str)}:  # repeats judged once
            named |= actions_matched(pattern)
        sid = s.get("Sid")
        out.append(
            Grant(
                path=path,
                statement=s,
                sid=sid if isinstance(sid, str) else None,
                allow=s.get("Effect") == "Allow",
                principals=principals,
                everyone=everyone,
                not_principal=not_principal,
                actions=ALL_KMS_ACTIONS - named if not_action else named,
                not_action=not_action,
            )
        )
    return out


def action_items(statement: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    """(path, pattern) of every string of the statement's Action or NotAction."""
    key = "NotAction" if "NotAction" in statement else "Action"
    value = statement.get(key)
    if isinstance(value, str):
        yield f"{path}.{key}", value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                yield f"{path}.{key}[{i}]", item
