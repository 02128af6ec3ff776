"""ListKeyPolicies page tokens: KMS's marker, bound to the key it was issued for.

A token is base64 JSON ``{"k": key ARN, "m": KMS Marker}`` and is not signed (signing
would need a key shared by every replica), so a caller can forge one with any marker.
The marker is therefore checked against KMS's own constraints before it is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from kms_policy_service.errors import FieldViolation, InvalidArgument

MAX_PAGE_SIZE = 1000  # botocore model, LimitType
# botocore model, MarkerType: min 1, max 1024, pattern [\u0020-\u00FF]*
MAX_MARKER_CHARS = 1024
_MARKER = re.compile(r"[\u0020-\u00FF]+")


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
    """KMS's marker inside `token`; refused unless it decodes, names `key_arn`, and holds a
    marker within KMS's MarkerType (tokens are not signed: a forged one may hold anything)."""
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
    if len(marker) > MAX_MARKER_CHARS or not _MARKER.fullmatch(marker):
        raise _invalid(
            "page_token",
            "page_token holds a marker KMS would refuse (KMS markers are 1 to 1024 "
            "characters U+0020..U+00FF); restart listing from the first page",
            "INVALID_PAGE_TOKEN",
        )
    return marker
