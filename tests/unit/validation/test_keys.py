"""Key identifiers: the five accepted forms, and the account/Region scope."""

from __future__ import annotations

import pytest

from kms_policy_service.errors import InvalidArgument
from kms_policy_service.validation import KeyKind, check_key_scope, parse_key_id

UUID = "1234abcd-12ab-34cd-56ef-1234567890ab"
MRK = "mrk-1234abcd12ab34cd56ef1234567890ab"

OTHER_DIGITS = "\u0661" * 12  # digits to `\d`, not an account ID


@pytest.mark.parametrize(
    ("raw", "kind", "region", "account"),
    [
        (UUID, KeyKind.KEY_ID, None, None),
        (MRK, KeyKind.KEY_ID, None, None),
        (
            f"arn:aws:kms:us-east-2:111122223333:key/{UUID}",
            KeyKind.KEY_ARN,
            "us-east-2",
            "111122223333",
        ),
        (
            f"arn:aws-cn:kms:cn-north-1:111122223333:key/{MRK}",
            KeyKind.KEY_ARN,
            "cn-north-1",
            "111122223333",
        ),
        (
            f"arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/{UUID}",
            KeyKind.KEY_ARN,
            "us-gov-west-1",
            "111122223333",
        ),
        ("alias/ExampleAlias", KeyKind.ALIAS, None, None),
        ("alias/aws/s3", KeyKind.ALIAS, None, None),
        (
            "arn:aws:kms:us-east-2:111122223333:alias/ExampleAlias",
            KeyKind.ALIAS_ARN,
            "us-east-2",
            "111122223333",
        ),
    ],
)
def test_accepted_forms(raw: str, kind: KeyKind, region: str | None, account: str | None) -> None:
    ref = parse_key_id(raw)
    assert (ref.kind, ref.region, ref.account) == (kind, region, account)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "fake-key-id",
        UUID.replace("-", ""),
        "mrk-fake",
        "alias/",
        "alias/has space",
        f"arn:aws:kms:us-east-2:11112222333:key/{UUID}",  # 11-digit account
        f"arn:aws:kms:us-east-2:{OTHER_DIGITS}:key/{UUID}",  # other scripts' digits
        f"arn:aws:kms:us-east-\u0662:111122223333:key/{UUID}",
        f"arn:aws:s3:us-east-2:111122223333:key/{UUID}",
        f"arn:other:kms:us-east-2:111122223333:key/{UUID}",
        "x" * 2049,
    ],
)
def test_malformed_ids_are_invalid_key_id(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_key_id(raw)
    assert caught.value.reason == "INVALID_KEY_ID"
    assert caught.value.field_violations[0].field == "key_id"


def scope(raw: str, allowed: frozenset[str] = frozenset()) -> str:
    return check_key_scope(
        parse_key_id(raw), account="111122223333", home_region="us-east-1", allowed_regions=allowed
    )


def test_bare_ids_and_aliases_are_served_from_the_home_region() -> None:
    assert scope(UUID) == "us-east-1"
    assert scope("alias/x") == "us-east-1"


def test_another_account_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        scope(f"arn:aws:kms:us-east-1:999999999999:key/{UUID}")
    assert caught.value.reason == "CROSS_ACCOUNT_KEY"


def test_another_region_is_served_only_when_allowed() -> None:
    arn = f"arn:aws:kms:eu-west-1:111122223333:key/{UUID}"
    with pytest.raises(InvalidArgument) as caught:
        scope(arn)
    assert caught.value.reason == "REGION_NOT_ALLOWED"
    assert scope(arn, frozenset({"eu-west-1"})) == "eu-west-1"
