"""Policy-name rules: `default` is read/write, `AWS_RAM` read-only, nothing else exists."""

from __future__ import annotations

import re

from kms_policy_service.errors import FieldViolation, InvalidArgument

DEFAULT_POLICY_NAME = "default"
READ_ONLY_POLICY_NAMES = frozenset({"AWS_RAM"})  # shared through AWS RAM; KMS refuses Put
KNOWN_POLICY_NAMES = frozenset({DEFAULT_POLICY_NAME}) | READ_ONLY_POLICY_NAMES

# botocore model, PolicyNameType: 1-128 characters of [\w]+.
_NAME = re.compile(r"[\w]{1,128}", re.ASCII)


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(
        message,
        reason="INVALID_POLICY_NAME",
        field_violations=[FieldViolation("policy_name", message, reason="INVALID_POLICY_NAME")],
    )


def policy_name_for_read(raw: str) -> str:
    """The policy name to read: empty means `default`."""
    name = raw or DEFAULT_POLICY_NAME
    if not _NAME.fullmatch(name):
        raise _invalid(f"policy_name {raw[:140]!r} is not 1-128 word characters")
    if name not in KNOWN_POLICY_NAMES:
        raise _invalid(
            f"policy_name {name!r} does not exist; KMS keys have only "
            f"{', '.join(sorted(KNOWN_POLICY_NAMES))}"
        )
    return name


def policy_name_for_write(raw: str) -> str:
    """The policy name to write: only `default` is writable."""
    name = policy_name_for_read(raw)
    if name in READ_ONLY_POLICY_NAMES:
        raise _invalid(f"policy_name {name!r} is read-only: only AWS RAM may change it")
    return name
