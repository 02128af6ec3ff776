"""Findings: what a caller wrote can be quoted, but never in a form no reply can carry."""

from __future__ import annotations

import pytest

from kms_policy_service.errors import InvalidArgument, to_status
from kms_policy_service.validation.findings import Finding, encodable, raise_for_errors


def test_a_lone_surrogate_is_spelled_as_its_escape() -> None:
    assert encodable("a\ud800b\udfff") == "a\\ud800b\\udfff"


def test_text_that_encodes_is_left_as_it_is() -> None:
    assert encodable("Sid é \U0001f600 \\ud800") == "Sid é \U0001f600 \\ud800"


def test_a_finding_quoting_a_surrogate_builds_a_status() -> None:
    finding = Finding.error("UNKNOWN_ELEMENT", "Statement[0].\ud800", "'\ud800' is unknown")
    assert (finding.path, finding.message) == ("Statement[0].\\ud800", "'\\ud800' is unknown")
    with pytest.raises(InvalidArgument) as caught:
        raise_for_errors([finding], field="policy", reason="INVALID_POLICY")
    to_status(caught.value).SerializeToString()  # raised on the raw surrogate before
