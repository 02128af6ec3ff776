"""The policy lockout safety check, done locally before KMS is called.

KMS (PutKeyPolicy, BypassPolicyLockoutSafetyCheck) refuses a new default policy
that would not let the calling principal call PutKeyPolicy on the key later.
We evaluate the same question conservatively: an explicit unconditional Deny
wins; an Allow counts only without a Condition; wildcards in actions and
principals count; the account (root or bare ID) counts as in KMS.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kms_policy_service.validation.document import as_list, iter_statements
from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.keys import account_of
from kms_policy_service.validation.wildcards import WildcardTexts, wildcard_match

PUT_KEY_POLICY = "kms:PutKeyPolicy"
_PUT_KEY_POLICY = WildcardTexts((PUT_KEY_POLICY,), ignore_case=True)

_ASSUMED_ROLE = re.compile(
    r"arn:(?P<partition>[\w-]+):sts::(?P<account>[0-9]{12}):assumed-role/(?P<role>[^/]+)/(?P<session>.+)"
)
_STS_USER = re.compile(r"arn:(?P<partition>[\w-]+):sts::(?P<account>[0-9]{12}):user/(?P<name>.+)")


@dataclass(frozen=True)
class ServicePrincipal:
    """The service's own AWS principal, in the forms a key policy can name it."""

    account: str
    arn: str  # the IAM ARN a policy names: the role for an assumed-role session
    session_arn: str  # what STS GetCallerIdentity answered
    partition: str = "aws"

    @classmethod
    def from_caller_identity(cls, account: str, arn: str) -> ServicePrincipal:
        """Map STS GetCallerIdentity to the ARN a key policy names.

        An assumed-role session maps to its role (IAM policies name roles, not
        sessions). The session ARN does not show the role's path; `is_named_by`
        matches the role by account and name whatever its path.
        """
        partition = arn.split(":")[1] if arn.startswith("arn:") else "aws"
        m = _ASSUMED_ROLE.fullmatch(arn)
        if m:
            return cls(account, f"arn:{partition}:iam::{account}:role/{m['role']}", arn, partition)
        m = _STS_USER.fullmatch(arn)
        if m:  # moto answers sts ...:user/NAME for an IAM user
            return cls(account, f"arn:{partition}:iam::{account}:user/{m['name']}", arn, partition)
        return cls(account, arn, arn, partition)

    @classmethod
    def for_role(cls, role_arn: str, session_name: str) -> ServicePrincipal:
        """The principal the service is in a member account: the role it assumes there."""
        partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
        name = role_arn.rsplit("/", 1)[1]
        session = f"arn:{partition}:sts::{account}:assumed-role/{name}/{session_name}"
        return cls(account, role_arn, session, partition)

    def names(self) -> set[str]:
        return {
            "*",
            self.account,
            f"arn:{self.partition}:iam::{self.account}:root",
            self.arn,
            self.session_arn,
        }

    def is_named_by(self, principal: str) -> bool:
        """A policy principal that means this service (a role named with its path too)."""
        if principal in self.names():
            return True
        # STS session ARNs drop the role's path (role/path/to/Name -> assumed-role/Name/...),
        # so a role ARN with any path and the same name is the same role.
        role = f"arn:{self.partition}:iam::{self.account}:role/"
        if self.arn.startswith(role) and principal.startswith(role):
            return principal.rsplit("/", 1)[1] == self.arn.rsplit("/", 1)[1]
        return False


@dataclass(frozen=True)
class ServicePrincipals:
    """Who the service is in each account it serves: its own principal at home, the
    role it assumes in each member account."""

    home: ServicePrincipal
    members: Mapping[str, ServicePrincipal] = field(default_factory=dict)

    def for_key(self, key_id: str | None) -> ServicePrincipal:
        """The principal that manages the key a key ARN or alias ARN names (else home's)."""
        account = account_of(key_id or "")
        return self.members.get(account, self.home) if account else self.home


def _principal_applies(statement: dict[str, Any], principal: ServicePrincipal) -> bool:
    def listed(value: Any) -> bool:
        if value == "*":
            return True
        if not isinstance(value, dict):
            return False
        entries = [p for p in as_list(value.get("AWS", [])) if isinstance(p, str)]
        return any(principal.is_named_by(p) for p in entries)

    def listed_exactly(value: Any) -> bool:
        # NotPrincipal excludes only what it names exactly: the service's own session
        # (or, for a user, its user ARN), never by its account or its role alone.
        if not isinstance(value, dict):
            return False
        entries = {p for p in as_list(value.get("AWS", [])) if isinstance(p, str)}
        return principal.session_arn in entries or (
            ":user/" in principal.arn and principal.arn in entries
        )

    if "Principal" in statement:
        return listed(statement["Principal"])
    if "NotPrincipal" in statement:
        return not listed_exactly(statement["NotPrincipal"])
    return False


def _action_applies(statement: dict[str, Any]) -> bool:
    def hit(value: Any) -> bool:
        return any(isinstance(a, str) and _PUT_KEY_POLICY.any_match(a) for a in as_list(value))

    if "Action" in statement:
        return hit(statement["Action"])
    if "NotAction" in statement:
        return not hit(statement["NotAction"])
    return False


def _resource_applies(statement: dict[str, Any], key_arn: str | None, *, assume: bool) -> bool:
    # With the key not yet known (key_arn None) the check is optimistic: an ARN
    # resource is assumed to name the key in an Allow (`assume` True) and not to in a
    # Deny, so only a policy that locks the service out of every key is refused; it
    # runs again once the key is resolved.
    def names_key(value: Any, *, unknown: bool) -> bool:
        return any(
            isinstance(r, str)
            and (r == "*" or (unknown if key_arn is None else wildcard_match(r, key_arn)))
            for r in as_list(value)
        )

    if "Resource" in statement:
        return names_key(statement["Resource"], unknown=assume)
    if "NotResource" in statement:
        return not names_key(statement["NotResource"], unknown=not assume)
    return False


def lockout_findings(
    document: dict[str, Any], principal: ServicePrincipal, key_arn: str | None
) -> Iterator[Finding]:
    """An ERROR POLICY_LOCKOUT unless the policy lets `principal` call PutKeyPolicy again."""
    allowed = False
    denied_at: str | None = None
    for path, s in iter_statements(document):
        if not (
            _principal_applies(s, principal)
            and _action_applies(s)
            and _resource_applies(s, key_arn, assume=s.get("Effect") == "Allow")
        ):
            continue
        conditional = "Condition" in s
        if s.get("Effect") == "Deny":
            if conditional:
                yield Finding.warning(
                    "LOCKOUT_RISK",
                    f"{path}.Condition",
                    f"this conditional Deny can stop {principal.arn} from updating the policy "
                    "when its condition holds",
                )
            elif denied_at is None:
                denied_at = path
        elif s.get("Effect") == "Allow" and not conditional:
            allowed = True
    if denied_at is not None:
        yield Finding.error(
            "POLICY_LOCKOUT",
            denied_at,
            f"this Deny would lock out {principal.arn}: the service could never update the "
            "key policy again (set bypass_policy_lockout_safety_check to override)",
        )
    elif not allowed:
        yield Finding.error(
            "POLICY_LOCKOUT",
            "Statement",
            f"no unconditional Allow lets {principal.arn} (or account {principal.account}) call "
            "kms:PutKeyPolicy: the service could never update the key policy again "
            "(set bypass_policy_lockout_safety_check to override)",
        )
