"""Requests as validated, immutable commands: built once, before anything else runs.

Every field is checked here (key id, policy name, etag, the policy document), so
nothing below the command reads the raw request. Field errors raise; the policy's
findings are kept on the command, to be raised once the caller is authorized (an
unauthorized caller learns nothing about its document).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kms_policy_service.errors import FieldViolation, InvalidArgument
from kms_policy_service.validation.document import ParsedPolicy, parse_policy
from kms_policy_service.validation.keys import KeyKind, KeyRef, parse_key_id
from kms_policy_service.validation.names import policy_name_for_write

_ETAG = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PutCommand:
    key: KeyRef
    policy_name: str
    policy: ParsedPolicy  # the text as sent, its document (if it parsed) and findings
    expected_etag: str  # "": no precondition
    bypass_lockout_check: bool
    validate_only: bool

    @property
    def known_key_arn(self) -> str | None:
        """The key ARN when the caller named the key by it (no lookup needed)."""
        return self.key.raw if self.key.kind is KeyKind.KEY_ARN else None


@dataclass(frozen=True)
class ValidateCommand:
    key: KeyRef | None
    policy_name: str
    policy: ParsedPolicy


def put_command(
    *,
    key_id: str,
    policy_name: str,
    policy: str,
    etag: str,
    bypass_lockout_check: bool,
    validate_only: bool,
) -> PutCommand:
    key = parse_key_id(key_id)
    name = policy_name_for_write(policy_name)
    if etag and not _ETAG.fullmatch(etag):
        message = "etag must be 64 lowercase hex characters (from a Get)"
        raise InvalidArgument(
            message,
            reason="INVALID_ETAG",
            field_violations=[FieldViolation("etag", message, reason="INVALID_ETAG")],
        )
    return PutCommand(
        key=key,
        policy_name=name,
        policy=parse_policy(policy),
        expected_etag=etag,
        bypass_lockout_check=bypass_lockout_check,
        validate_only=validate_only,
    )


def validate_command(*, key_id: str, policy_name: str, policy: str) -> ValidateCommand:
    name = policy_name_for_write(policy_name)
    key = parse_key_id(key_id) if key_id else None
    return ValidateCommand(key=key, policy_name=name, policy=parse_policy(policy))
