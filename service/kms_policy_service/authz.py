"""Authorization: which caller may do which action on which keys, from a reloadable file.

Format (YAML or JSON)::

    rules:
      - callers: ["spiffe://cluster.local/ns/payments/sa/*"]   # exact, or * glob
        actions: ["GetKeyPolicy", "ListKeyPolicies"]           # or "*"
        keys: ["arn:aws:kms:*:123456789012:key/*", "alias/payments-*"]  # or "*"
        scope:                          # optional: what PutKeyPolicy may change
          sids: ["payments-*"]          # the Sids the caller owns
          principals: ["arn:aws:iam::123456789012:role/payments-*"]  # optional
          actions: ["kms:Decrypt", "kms:GenerateDataKey*"]           # optional

With a file, anything not allowed is denied. The file is re-read when it
changes (polled) or on SIGHUP; a file that fails to load keeps the previous
rules and logs why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kms_policy_service import metrics
from kms_policy_service.reloading import ReloadableFile
from kms_policy_service.validation.grants import actions_matched
from kms_policy_service.validation.scopes import Scope
from kms_policy_service.validation.wildcards import WildcardTexts

log = logging.getLogger(__name__)

MAX_CACHED_DECISIONS = 4096
ACTIONS = ("GetKeyPolicy", "PutKeyPolicy", "ListKeyPolicies", "ValidateKeyPolicy")


class AuthzPolicyError(ValueError):
    """The policy file is malformed; the message says where."""


@dataclass(frozen=True)
class Rule:
    callers: tuple[str, ...]
    actions: tuple[str, ...]
    keys: tuple[str, ...]
    scope: Scope | None = None  # None: any change the caller may make at all

    def covers(self, caller: str, action: str) -> bool:
        if "*" not in self.actions and action not in self.actions:
            return False
        subject = WildcardTexts((caller,))
        return any(subject.any_match(pattern) for pattern in self.callers)

    def allows_key(self, names: Iterable[str]) -> bool:
        # The caller names the key: nothing it sends is compiled or cached (see wildcards).
        texts = WildcardTexts(names)
        return any(texts.any_match(pattern) for pattern in self.keys)


@dataclass(frozen=True)
class AuthzPolicy:
    rules: tuple[Rule, ...]
    _decisions: dict[tuple[str, str, tuple[str, ...] | None], bool] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def parse(cls, text: str, *, source: str = "policy") -> AuthzPolicy:
        import yaml  # only with a file configured: a sidecar without one never loads it

        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as exc:
            raise AuthzPolicyError(f"{source}: not YAML or JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
            raise AuthzPolicyError(f"{source}: expected an object with a list `rules`")
        unknown_top = set(data) - {"rules"}
        if unknown_top:
            raise AuthzPolicyError(f"{source}: unknown field {sorted(unknown_top)[0]!r}")
        return cls(tuple(_rule(r, f"{source}: rules[{i}]") for i, r in enumerate(data["rules"])))

    @classmethod
    def load(cls, path: Path) -> AuthzPolicy:
        try:
            text = path.read_text()
        except OSError as exc:
            raise AuthzPolicyError(f"{path}: {exc.strerror}") from exc
        return cls.parse(text, source=str(path))

    def may_act(self, caller: str, action: str) -> bool:
        """Some rule lets `caller` do `action` on some key."""
        return self._decide(caller, action, None)

    def allows(self, caller: str, action: str, key_names: Sequence[str]) -> bool:
        """Some rule lets `caller` do `action` on a key known by any of `key_names`."""
        return self._decide(caller, action, tuple(key_names))

    def rules_for(self, caller: str, action: str, key_names: Sequence[str]) -> list[Rule]:
        """The rules that let `caller` do `action` on a key known by any of `key_names`."""
        names = tuple(key_names)
        return [r for r in self.rules if r.covers(caller, action) and r.allows_key(names)]

    def _decide(self, caller: str, action: str, key_names: tuple[str, ...] | None) -> bool:
        # Decisions are cached with the policy (a reload makes a new one), bounded in size.
        slot = (caller, action, key_names)
        decision = self._decisions.get(slot)
        if decision is None:
            decision = any(
                r.covers(caller, action) and (key_names is None or r.allows_key(key_names))
                for r in self.rules
            )
            if len(self._decisions) >= MAX_CACHED_DECISIONS:
                self._decisions.clear()
            self._decisions[slot] = decision
        return decision


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise AuthzPolicyError(f"{where}: expected a non-empty list of strings")
    return tuple(value)


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise AuthzPolicyError(f"{where}: expected an object")
    unknown = set(raw) - {"callers", "actions", "keys", "scope"}
    if unknown:
        raise AuthzPolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    actions = _strings(raw.get("actions"), f"{where}.actions")
    for action in actions:
        if action != "*" and action not in ACTIONS:
            raise AuthzPolicyError(f"{where}.actions: unknown action {action!r}")
    return Rule(
        callers=_strings(raw.get("callers"), f"{where}.callers"),
        actions=actions,
        keys=_strings(raw.get("keys"), f"{where}.keys"),
        scope=None if raw.get("scope") is None else _scope(raw["scope"], f"{where}.scope"),
    )


def _scope(raw: Any, where: str) -> Scope:
    if not isinstance(raw, dict):
        raise AuthzPolicyError(f"{where}: expected an object")
    unknown = set(raw) - {"sids", "principals", "actions"}
    if unknown:
        raise AuthzPolicyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    if "sids" not in raw:
        raise AuthzPolicyError(f"{where}: `sids` is required (the Sids the caller owns)")
    actions = None if raw.get("actions") is None else _strings(raw["actions"], f"{where}.actions")
    for action in actions or ():
        if not actions_matched(action):
            raise AuthzPolicyError(f"{where}.actions: {action!r} names no KMS action")
    return Scope(
        sids=_strings(raw["sids"], f"{where}.sids"),
        principals=None
        if raw.get("principals") is None
        else _strings(raw["principals"], f"{where}.principals"),
        actions=actions,
    )


ALLOW_ALL = AuthzPolicy((Rule(("*",), ("*",), ("*",)),))


class Authorizer:
    """Holds the current policy; reloads it when the file changes or on request."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.required = path is not None  # with a file, an unidentified caller is refused
        self._file = (
            None
            if path is None
            else ReloadableFile(
                path,
                AuthzPolicy.load,
                what="authorization policy",
                error=AuthzPolicyError,
                reloads=metrics.authz_reloads_total,
            )
        )

    @property
    def policy(self) -> AuthzPolicy:
        return ALLOW_ALL if self._file is None else self._file.value

    def reload(self) -> bool:
        return self._file is not None and self._file.reload()

    def reload_if_changed(self) -> bool:
        return self._file is not None and self._file.reload_if_changed()

    async def watch(self, interval: float) -> None:
        if self._file is not None:
            await self._file.watch(interval)
