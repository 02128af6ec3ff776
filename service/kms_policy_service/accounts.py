"""Member accounts: which AWS account a key lives in, and the role the service assumes there.

KMS key policies cannot be changed across accounts, so a key of another account is
managed with credentials from STS AssumeRole of that account's role (kms.py does the
assuming, with botocore's refreshable credentials). A key of another account is named
by its key ARN or alias ARN; an alias name or a bare key ID means the home account.

This module holds only the values and rules; it imports nothing from AWS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kms_policy_service.validation.keys import ACCOUNT_ID_RE, account_of

SESSION_NAME = "kms-policy-service"  # RoleSessionName: CloudTrail names the service by it
CALLER_TAG = "kms-policy-service:caller"  # session tag key carrying the caller's identity
# IAM session tags: a value is at most 256 characters of [\p{L}\p{Z}\p{N}_.:/=+\-@]
# (letters, spaces, digits and those marks; SPIFFE IDs fit).
MAX_TAG_VALUE = 256
_TAG_VALUE = re.compile(r"(?:[^\W_]|[ _.:/=+\-@])+")
# Pseudo-codes for caller identities that cannot be a session tag (errors.KMS_ERROR_TABLE).
CALLER_IDENTITY_TOO_LONG = "CallerIdentityTooLong"
CALLER_IDENTITY_NOT_TAGGABLE = "CallerIdentityNotTaggable"

ROLE_ARN_RE = re.compile(
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):iam::(?P<account>[0-9]{12}):"
    r"role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]{1,64})",
    re.ASCII,  # IAM names are ASCII; \w would also take other scripts' letters
)


def parse_account_roles(values: list[str]) -> dict[str, str]:
    """ACCOUNT=ROLE_ARN items (repeated flags, or comma-separated in the environment)."""
    roles: dict[str, str] = {}
    for item in (v.strip() for value in values for v in value.split(",")):
        if not item:
            continue
        account, sep, role = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not ACCOUNT=ROLE_ARN")
        roles[account.strip()] = role.strip()
    return roles


def check_account_roles(roles: Mapping[str, str]) -> None:
    """Raise ValueError unless every entry is a 12-digit account and a role ARN in it."""
    for account, role in roles.items():
        if not ACCOUNT_ID_RE.fullmatch(account):
            raise ValueError(f"{account!r} is not a 12-digit AWS account ID")
        m = ROLE_ARN_RE.fullmatch(role)
        if not m:
            raise ValueError(f"{role!r} is not an IAM role ARN")
        if m["account"] != account:
            raise ValueError(f"role {role} is not in account {account}")


def session_tag_value(caller: str) -> str:
    """The caller's identity as a session tag value, or the pseudo-code of why it cannot be.

    Never truncated: a cut identity could be someone else's.
    """
    if len(caller) > MAX_TAG_VALUE:
        return CALLER_IDENTITY_TOO_LONG
    if not _TAG_VALUE.fullmatch(caller):
        return CALLER_IDENTITY_NOT_TAGGABLE
    return ""


@dataclass(frozen=True)
class AccountRoles:
    """The member accounts and how the service becomes itself in each."""

    roles: Mapping[str, str] = field(default_factory=dict)  # account -> role ARN
    external_id: str | None = None  # sts:ExternalId the member roles' trust policies require
    caller_session_tags: bool = False  # one session per caller, tagged with its identity

    def role_for(self, key_id: str) -> tuple[str, str] | None:
        """(account, role ARN) when `key_id` names a member account's key, else None."""
        account = account_of(key_id)
        if account is None:
            return None
        role = self.roles.get(account)
        return None if role is None else (account, role)

    @property
    def accounts(self) -> frozenset[str]:
        return frozenset(self.roles)
