"""Statement-level diffs: matched by Sid, else by position."""

from __future__ import annotations

from kms_policy_client._diff import render, statement_diff


def test_added_removed_and_changed_statements() -> None:
    before = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "A", "Effect": "Allow"}, {"Sid": "B"}, {"Effect": "Deny"}],
    }
    after = {
        "Version": "2012-10-17",
        "Statement": [{"Sid": "A", "Effect": "Deny"}, {"Sid": "C"}, {"Effect": "Deny"}],
    }
    changes = [(c.op, c.name) for c in statement_diff(before, after)]
    assert changes == [("removed", "B"), ("changed", "A"), ("added", "C")]
    text = render(statement_diff(before, after))
    assert "~ changed A" in text and '-  "Effect": "Allow"' in text.replace("    ", "")


def test_identical_documents_have_no_diff() -> None:
    doc = {"Version": "2012-10-17", "Statement": {"Sid": "A"}}
    assert statement_diff(doc, dict(doc)) == []
