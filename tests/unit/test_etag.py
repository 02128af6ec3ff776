"""Etags: the canonical form, so formatting never changes them; raw text when not JSON."""

from __future__ import annotations

import hashlib
import json

from kms_policy_service.etag import policy_etag


def test_reindentation_and_key_order_do_not_change_the_etag() -> None:
    a = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Sid": "é"}]}'
    b = json.dumps(
        {"Statement": [{"Sid": "é", "Effect": "Allow"}], "Version": "2012-10-17"}, indent=4
    )
    assert policy_etag(a) == policy_etag(b)
    canonical = '{"Statement":[{"Effect":"Allow","Sid":"é"}],"Version":"2012-10-17"}'
    assert policy_etag(a) == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_real_change_changes_the_etag() -> None:
    assert policy_etag('{"a": 1}') != policy_etag('{"a": 2}')


def test_text_that_is_not_json_hashes_as_is() -> None:
    assert policy_etag("not json") == hashlib.sha256(b"not json").hexdigest()


def test_a_policy_holding_an_unpaired_surrogate_escape_still_has_an_etag() -> None:
    # Stored by another tool, read back from KMS: the service must still be able to manage it.
    text = '{"Version": "2012-10-17", "Statement": [{"Sid": "x\\ud800"}]}'
    assert text.isascii()
    etag = policy_etag(text)
    assert len(etag) == 64
    assert etag == policy_etag(json.dumps(json.loads(text), indent=2))
    assert etag != policy_etag('{"Version": "2012-10-17", "Statement": [{"Sid": "x\\ud801"}]}')


def test_a_raw_surrogate_in_text_that_is_not_json_still_hashes() -> None:
    assert len(policy_etag("not json \ud800")) == 64
