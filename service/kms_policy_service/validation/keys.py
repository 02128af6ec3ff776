"""Key identifiers: parse what callers send, and keep keys inside the accounts served.

Those are the service's own (home) account and the member accounts it has a role in
(--account-role). A key of a member account is named by its key ARN or alias ARN; an
alias name or a bare key ID always means the home account.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kms_policy_service.errors import FieldViolation, InvalidArgument

MAX_KEY_ID_LENGTH = 2048  # botocore model, KeyIdType

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_KEY_ID = rf"(?:{_UUID}|mrk-[0-9a-fA-F]{{32}})"
# KMS CreateAlias: alias names are alias/ + [a-zA-Z0-9/_-]+, at most 256 characters in all.
_ALIAS = r"alias/[a-zA-Z0-9/_-]{1,250}"
_ARN_PREFIX = (
    r"arn:(?P<partition>aws|aws-cn|aws-us-gov):kms:"
    r"(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]):(?P<account>[0-9]{12}):"
)

KEY_ID_RE = re.compile(_KEY_ID)
ALIAS_RE = re.compile(_ALIAS)
KEY_ARN_RE = re.compile(_ARN_PREFIX + r"key/(?P<id>" + _KEY_ID + ")")
ALIAS_ARN_RE = re.compile(_ARN_PREFIX + r"(?P<id>" + _ALIAS + ")")


# An AWS account ID: twelve ASCII digits (`\d` would also take other scripts' digits).
ACCOUNT_ID_RE = re.compile(r"[0-9]{12}")
_ARN_ACCOUNT = re.compile(r"arn:[\w-]+:kms:[a-z0-9-]+:(?P<account>[0-9]{12}):")


def account_of(key_id: str) -> str | None:
    """The account a key ARN or alias ARN names; None (the home account) for the rest."""
    m = _ARN_ACCOUNT.match(key_id)
    return m["account"] if m else None


class KeyKind(enum.Enum):
    KEY_ID = "key-id"
    KEY_ARN = "key-arn"
    ALIAS = "alias"
    ALIAS_ARN = "alias-arn"


@dataclass(frozen=True)
class KeyRef:
    """A syntactically valid key identifier, as the caller named it."""

    raw: str
    kind: KeyKind
    region: str | None = None  # ARNs only
    account: str | None = None  # ARNs only

    @property
    def names(self) -> tuple[str, ...]:
        """The names authorization rules may match before resolution (an alias ARN's alias too)."""
        if self.kind is KeyKind.ALIAS_ARN:
            return (self.raw, self.raw.split(":", 5)[5])
        return (self.raw,)

    def names_at_home(self, account: str, region: str) -> tuple[str, ...]:
        """`names`, but an alias ARN answers to its bare alias name only in the home account
        and Region: a rule on `alias/x` means the home account's alias, never a member
        account's (or another Region's) alias of the same name."""
        if self.kind is KeyKind.ALIAS_ARN and (self.account != account or self.region != region):
            return (self.raw,)
        return self.names


def _invalid(
    message: str, reason: str = "INVALID_KEY_ID", field: str = "key_id"
) -> InvalidArgument:
    return InvalidArgument(
        message, reason=reason, field_violations=[FieldViolation(field, message, reason=reason)]
    )


def parse_key_id(raw: str, *, field: str = "key_id") -> KeyRef:
    """Parse a key ID, multi-Region key ID, key ARN, alias name or alias ARN."""
    if not raw:
        raise _invalid(f"{field} is required", field=field)
    if len(raw) > MAX_KEY_ID_LENGTH:
        raise _invalid(f"{field} is longer than {MAX_KEY_ID_LENGTH} characters", field=field)
    if KEY_ID_RE.fullmatch(raw):
        return KeyRef(raw, KeyKind.KEY_ID)
    if ALIAS_RE.fullmatch(raw):
        return KeyRef(raw, KeyKind.ALIAS)
    for pattern, kind in ((KEY_ARN_RE, KeyKind.KEY_ARN), (ALIAS_ARN_RE, KeyKind.ALIAS_ARN)):
        m = pattern.fullmatch(raw)
        if m:
            return KeyRef(raw, kind, region=m["region"], account=m["account"])
    shown = raw if len(raw) <= 100 else raw[:100] + "..."
    raise _invalid(
        f"{field} {shown!r} is not a key ID, multi-Region key ID, key ARN, alias name "
        "(alias/...) or alias ARN",
        field=field,
    )


def check_key_scope(
    ref: KeyRef,
    *,
    account: str,
    home_region: str,
    allowed_regions: frozenset[str],
    member_accounts: frozenset[str] = frozenset(),
) -> str:
    """The Region to serve `ref` from; refuse accounts not served and Regions not allowed."""
    if ref.account is not None and ref.account != account and ref.account not in member_accounts:
        raise _invalid(
            f"key {ref.raw!r} belongs to account {ref.account}; key policies can only be "
            f"managed in the service's own account {account} and the accounts it has a role "
            "in (--account-role)",
            reason="CROSS_ACCOUNT_KEY",
        )
    region = ref.region or home_region
    if region != home_region and region not in allowed_regions:
        raise _invalid(
            f"key {ref.raw!r} is in Region {region}, which this service is not configured "
            f"to serve (home Region {home_region})",
            reason="REGION_NOT_ALLOWED",
        )
    return region
