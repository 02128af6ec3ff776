"""ListKeyPolicies page tokens: KMS's marker, bound to the key it was issued for."""

from __future__ import annotations

import base64
import binascii
import json

from kms_policy_service.errors import FieldViolation, InvalidArgument

MAX_PAGE_SIZE = 1000  # botocore model, LimitType


def _invalid(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        message, reason=reason, field_violations=[FieldViolation(field, message, reason=reason)]
    )


def check_page_size(page_size: int) -> int | None:
    """The KMS Limit for `page_size` (None: the KMS default)."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise _invalid(
            "page_size",
            f"page_size must be 0 (the KMS default) to {MAX_PAGE_SIZE}",
            "INVALID_PAGE_SIZE",
        )
    return page_size or None


def encode_page_token(key_arn: str, marker: str) -> str:
    raw = json.dumps({"k": key_arn, "m": marker}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, key_arn: str) -> str:
    """KMS's marker inside `token`; refused unless this service issued it for `key_arn`."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        marker, owner = data["m"], data["k"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _invalid(
            "page_token", "page_token is not one this service issued", "INVALID_PAGE_TOKEN"
        ) from exc
    if owner != key_arn or not isinstance(marker, str):
        raise _invalid("page_token", "page_token belongs to another key", "INVALID_PAGE_TOKEN")
    return marker
