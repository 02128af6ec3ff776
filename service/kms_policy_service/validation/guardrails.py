"""Guardrails: what no key policy written through the service may contain, whoever writes it.

Format (YAML or JSON; every key optional, an unknown key is an error)::

    principal_accounts: ["123456789012"]     # AWS principals of Allow statements
    org_ids: ["o-a1b2c3d4e5"]                # for public statements' aws:PrincipalOrgID
    public: conditional                      # or deny (default: conditional)
    protected_sids: ["KeyAdministrators"]    # kept as they are in the current policy
    restricted_actions:
      actions: ["kms:PutKeyPolicy"]          # granted by an Allow only to...
      principals: ["arn:aws:iam::123456789012:role/kms-admin"]

Deny statements only remove access: `principal_accounts`, `public` and
`restricted_actions` never refuse them. Pure: a document (and the key's current
one) in, violations out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.grants import Grant, Principal, actions_matched, grants
from kms_policy_service.validation.keys import ACCOUNT_ID_RE

NAMES = (
    "principal_accounts",
    "org_ids",
    "public",
    "protected_sids",
    "restricted_actions",
    "lockout_bypass",
)
BYPASS_MODES = ("allow", "deny")
PUBLIC_MODES = ("conditional", "deny")
# A public statement is acceptable (public: conditional) only with one of these,
# under plain StringEquals (IfExists and ForAllValues pass when the key is absent).
ACCOUNT_CONDITION_KEYS = ("kms:calleraccount", "aws:principalaccount", "aws:sourceaccount")
ORG_CONDITION_KEY = "aws:principalorgid"
_ORG = re.compile(r"o-[a-z0-9]{10,32}")


class GuardrailsError(ValueError):
    """The guardrails file is malformed; the message says where."""


@dataclass(frozen=True)
class Violation:
    guardrail: str  # one of NAMES
    path: str  # JSON path in the new document ("Statement" for a removed statement)
    description: str

    def finding(self) -> Finding:
        return Finding.error(f"GUARDRAIL_{self.guardrail.upper()}", self.path, self.description)


@dataclass(frozen=True)
class Guardrails:
    principal_accounts: frozenset[str] | None = None
    org_ids: frozenset[str] | None = None
    public: str | None = None  # None: not checked (no guardrails file)
    protected_sids: tuple[str, ...] = ()
    restricted_actions: frozenset[str] = frozenset()  # lower-case KMS actions
    restricted_action_patterns: tuple[str, ...] = ()
    restricted_principals: frozenset[str] = frozenset()  # canonical principals
    lockout_bypass: str = "allow"  # deny: no Put may set bypass_policy_lockout_safety_check

    @property
    def needs_current_policy(self) -> bool:
        return bool(self.protected_sids)

    @classmethod
    def parse(cls, text: str, *, source: str = "guardrails") -> Guardrails:
        import yaml  # only with a file configured: a sidecar without one never loads it

        try:
            data = yaml.safe_load(text)  # JSON is YAML too
        except yaml.YAMLError as exc:
            raise GuardrailsError(f"{source}: not YAML or JSON: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise GuardrailsError(f"{source}: expected an object")
        unknown = sorted(str(k) for k in data if k not in NAMES)
        if unknown:
            raise GuardrailsError(
                f"{source}: unknown key {unknown[0]!r} (known: {', '.join(NAMES)})"
            )
        accounts = data.get("principal_accounts")
        orgs = data.get("org_ids")
        public = data.get("public", "conditional")
        if public not in PUBLIC_MODES:
            raise GuardrailsError(f"{source}: public must be one of {', '.join(PUBLIC_MODES)}")
        bypass = data.get("lockout_bypass", "allow")
        if bypass not in BYPASS_MODES:
            raise GuardrailsError(
                f"{source}: lockout_bypass must be one of {', '.join(BYPASS_MODES)}"
            )
        restricted = data.get("restricted_actions")
        patterns: tuple[str, ...] = ()
        principals: tuple[str, ...] = ()
        if restricted is not None:
            if not isinstance(restricted, dict) or set(restricted) != {"actions", "principals"}:
                raise GuardrailsError(
                    f"{source}: restricted_actions needs exactly `actions` and `principals`"
                )
            patterns = _strings(restricted["actions"], f"{source}: restricted_actions.actions")
            principals = _strings(
                restricted["principals"], f"{source}: restricted_actions.principals", empty=True
            )
            for pattern in patterns:
                if not actions_matched(pattern):
                    raise GuardrailsError(
                        f"{source}: restricted_actions.actions: {pattern!r} names no KMS action"
                    )
        return cls(
            principal_accounts=None
            if accounts is None
            else frozenset(_accounts(accounts, f"{source}: principal_accounts")),
            org_ids=None if orgs is None else frozenset(_orgs(orgs, f"{source}: org_ids")),
            public=public,
            protected_sids=_strings(
                data.get("protected_sids", []), f"{source}: protected_sids", empty=True
            ),
            restricted_actions=frozenset().union(*(actions_matched(p) for p in patterns))
            if patterns
            else frozenset(),
            restricted_action_patterns=patterns,
            restricted_principals=frozenset(Principal("", "AWS", p).canonical for p in principals),
            lockout_bypass=bypass,
        )

    def violations(
        self,
        document: dict[str, Any],
        current: dict[str, Any] | None,
        *,
        bypass_lockout_check: bool = False,
    ) -> list[Violation]:
        """Everything in `document` these guardrails refuse. `current`: the key's policy
        now (None when unknown: protected_sids is then not judged)."""
        out: list[Violation] = []
        if bypass_lockout_check and self.lockout_bypass == "deny":
            out.append(
                Violation(
                    "lockout_bypass",
                    "",
                    "bypass_policy_lockout_safety_check is not allowed through this service",
                )
            )
        new = grants(document)
        for g in new:
            if not g.allow:
                continue
            out.extend(self._accounts(g))
            out.extend(self._public(g))
            out.extend(self._restricted(g))
        if current is not None:
            out.extend(self._protected(new, grants(current), document, current))
        return out

    # -- one method per guardrail --------------------------------------------

    def _accounts(self, g: Grant) -> list[Violation]:
        if self.principal_accounts is None or g.not_principal:
            return []
        return [
            Violation(
                "principal_accounts",
                p.path,
                f"{p.value!r} is in account {p.account}, which is not one of the allowed "
                "principal accounts",
            )
            for p in g.principals
            if p.account is not None and p.account not in self.principal_accounts
        ]

    def _public(self, g: Grant) -> list[Violation]:
        if self.public is None or not g.everyone:
            return []
        where = f"{g.path}.NotPrincipal" if g.not_principal else f"{g.path}.Principal"
        if self.public == "deny":
            return [Violation("public", where, "public access (any principal) is not allowed")]
        if self._restricted_to_known_accounts(g.statement.get("Condition")):
            return []
        return [
            Violation(
                "public",
                where,
                "public access needs a StringEquals condition on kms:CallerAccount, "
                "aws:PrincipalAccount, aws:SourceAccount or aws:PrincipalOrgID with allowed "
                "values",
            )
        ]

    def _restricted_to_known_accounts(self, condition: Any) -> bool:
        if not isinstance(condition, dict):
            return False
        block = condition.get("StringEquals")  # operator names are case-sensitive
        if not isinstance(block, dict):
            return False
        if len({k.lower() for k in block}) != len(block):
            return False  # one key twice in two spellings: which one IAM reads is unclear
        for key, value in block.items():
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) and "${" not in v for v in values):
                continue  # a policy variable (`${aws:PrincipalAccount}`) restricts nothing
            name = key.lower()  # condition key names are not case-sensitive
            if name in ACCOUNT_CONDITION_KEYS:
                allowed = self.principal_accounts
            elif name == ORG_CONDITION_KEY:
                allowed = self.org_ids
            else:
                continue
            if allowed is None or all(v in allowed for v in values):
                return True
        return False

    def _restricted(self, g: Grant) -> list[Violation]:
        granted = g.actions & self.restricted_actions
        if not granted:
            return []
        names = ", ".join(sorted(granted))[:200]
        if g.everyone:
            where = f"{g.path}.NotPrincipal" if g.not_principal else f"{g.path}.Principal"
            return [
                Violation(
                    "restricted_actions",
                    where,
                    f"grants {names} to everyone; only the listed principals may have them",
                )
            ]
        return [
            Violation(
                "restricted_actions",
                p.path,
                f"grants {names} to {p.value!r}, which is not one of the principals allowed "
                "those actions",
            )
            for p in g.principals
            if p.canonical not in self.restricted_principals
        ]

    def _protected(
        self,
        new: list[Grant],
        current: list[Grant],
        document: dict[str, Any],
        before: dict[str, Any],
    ) -> list[Violation]:
        out = []
        by_sid = {g.sid: g for g in new if g.sid is not None}
        kept: list[Grant] = []
        for old in current:
            if old.sid is None or old.sid not in self.protected_sids:
                continue
            now = by_sid.get(old.sid)
            if now is None:
                out.append(
                    Violation(
                        "protected_sids",
                        "Statement",
                        f"the protected statement {old.sid!r} is removed",
                    )
                )
            elif now.canonical != old.canonical:
                out.append(
                    Violation(
                        "protected_sids", now.path, f"the protected statement {old.sid!r} changes"
                    )
                )
            else:
                kept.append(now)
        if kept and document.get("Version") != before.get("Version"):
            # The Version decides what policy variables in the kept statements mean.
            out.append(
                Violation(
                    "protected_sids",
                    "Version",
                    "changing Version changes what the protected statements mean",
                )
            )
        already = {g.canonical for g in current if not g.allow}
        for deny in (g for g in new if not g.allow and g.canonical not in already):
            for protected in kept:
                if deny.actions & protected.actions and _covers(deny, protected):
                    out.append(
                        Violation(
                            "protected_sids",
                            deny.path,
                            f"this Deny takes away what the protected statement "
                            f"{protected.sid!r} grants",
                        )
                    )
                    break
        return out


def _covers(deny: Grant, allow: Grant) -> bool:
    """Could `deny` apply to a principal `allow` names? Conservative: Conditions are not
    read (a conditional Deny may still apply), and a NotPrincipal Deny covers everyone
    (IAM applies it to the role, the account *and* every session of a role unless each
    is listed, and session names cannot all be listed)."""
    if allow.everyone or deny.not_principal or deny.everyone:
        return True
    return any(_principal_covers(d, a) for d in deny.principals for a in allow.principals)


def _principal_covers(denied: Principal, allowed: Principal) -> bool:
    if denied.kind != allowed.kind:
        return False
    if denied.canonical == allowed.canonical:
        return True
    if denied.account is None or denied.account != allowed.account:
        return False
    # A Deny on an account's root covers its IAM principals; an Allow to the root is how
    # they get their access (so a Deny on any of them takes some of it away); a Deny on a
    # session of a role covers the role's sessions of that name.
    if denied.canonical.endswith(":root") or allowed.canonical.endswith(":root"):
        return True
    return _role_of(denied.value) is not None and _role_of(denied.value) == _role_of(allowed.value)


def _role_of(arn: str) -> str | None:
    """`account/role name` of a role ARN (any path) or of one of its session ARNs."""
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return None
    account, resource = parts[4], parts[5]
    if parts[2] == "iam" and resource.startswith("role/"):
        return f"{account}/{resource.rsplit('/', 1)[-1]}"
    if parts[2] == "sts" and resource.startswith("assumed-role/"):
        return f"{account}/{resource.split('/')[1]}"
    return None


NO_GUARDRAILS = Guardrails()


def _strings(value: Any, where: str, *, empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or (not value and not empty)
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise GuardrailsError(f"{where}: expected a list of non-empty strings")
    return tuple(value)


def _accounts(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, list) and any(isinstance(v, int) for v in value):
        raise GuardrailsError(f'{where}: quote account IDs ("012345678901"): YAML reads numbers')
    accounts = _strings(value, where, empty=True)
    for a in accounts:
        if not ACCOUNT_ID_RE.fullmatch(a):
            raise GuardrailsError(f"{where}: {a!r} is not a 12-digit account ID")
    return accounts


def _orgs(value: Any, where: str) -> tuple[str, ...]:
    orgs = _strings(value, where, empty=True)
    for o in orgs:
        if not _ORG.fullmatch(o):
            raise GuardrailsError(f"{where}: {o!r} is not an organization ID (o-...)")
    return orgs
