"""Policy names: empty is default; AWS_RAM is read-only; nothing else exists."""

from __future__ import annotations

import pytest

from kms_policy_service.errors import InvalidArgument
from kms_policy_service.validation import policy_name_for_read, policy_name_for_write


@pytest.mark.parametrize(
    ("raw", "name"), [("", "default"), ("default", "default"), ("AWS_RAM", "AWS_RAM")]
)
def test_readable_names(raw: str, name: str) -> None:
    assert policy_name_for_read(raw) == name


@pytest.mark.parametrize("raw", ["Default", "other", "bad-name", "x" * 129, "with space"])
def test_unknown_or_malformed_names_are_refused(raw: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        policy_name_for_read(raw)
    assert caught.value.reason == "INVALID_POLICY_NAME"


def test_aws_ram_is_read_only() -> None:
    assert policy_name_for_write("") == "default"
    with pytest.raises(InvalidArgument) as caught:
        policy_name_for_write("AWS_RAM")
    assert "read-only" in caught.value.message
