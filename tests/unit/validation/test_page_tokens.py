"""Page tokens: unsigned, so the marker inside is held to KMS's MarkerType before use."""

from __future__ import annotations

import base64

import pytest

from kms_policy_service.errors import InvalidArgument
from kms_policy_service.validation.page_tokens import decode_page_token, encode_page_token

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# botocore's KMS model, MarkerType: 1 to 1024 characters, pattern [\u0020-\u00FF]*.
BAD_MARKERS = {
    "empty": "",
    "2018 chars": "m" * 2018,
    "40000 chars": "m" * 40_000,
    "1025 chars": "m" * (1024 + 1),
    "NUL": "abc\x00def",
    "newline": "abc\ndef",
    "control": "\x1f",
    "lone surrogate": "abc\ud800",
    "low surrogate": "\udfff",
    "above U+00FF": "abc\u0100",
    "astral": "\U0001f600",
}

GOOD_MARKERS = {
    "one char": "m",
    "1024 chars": "m" * 1024,
    "space": " ",
    "latin-1 edge": "\u00ff" * 1024,
    "kms-like": "AQICAHh0JwGp3N1Eabc+/=",
}


@pytest.mark.parametrize("marker", BAD_MARKERS.values(), ids=BAD_MARKERS.keys())
def test_a_forged_token_holding_a_marker_kms_would_refuse_is_refused(marker: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(encode_page_token(KEY, marker), KEY)
    err = caught.value
    assert err.reason == "INVALID_PAGE_TOKEN"
    assert [(v.field, v.reason) for v in err.field_violations] == [
        ("page_token", "INVALID_PAGE_TOKEN")
    ]


@pytest.mark.parametrize("marker", GOOD_MARKERS.values(), ids=GOOD_MARKERS.keys())
def test_a_marker_within_kms_constraints_round_trips(marker: str) -> None:
    assert decode_page_token(encode_page_token(KEY, marker), KEY) == marker


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        base64.urlsafe_b64encode(b"[1]").decode(),
        base64.urlsafe_b64encode(b'{"k": "x"}').decode(),
        base64.urlsafe_b64encode(b'{"k": "' + KEY.encode() + b'", "m": 7}').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        encode_page_token(KEY.replace("1234abcd", "9999abcd"), "m"),
    ],
)
def test_malformed_or_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_page_token(token, KEY)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
