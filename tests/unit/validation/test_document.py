"""Policy documents: each KMS rule refuses with its code at its JSON path; warnings go beyond."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kms_policy_service.validation import Severity, parse_policy
from kms_policy_service.validation.document import MAX_POLICY_BYTES, key_resource_findings

SEED = (Path(__file__).parents[2] / "fixtures" / "seed_policy.json").read_text()
ROOT = "arn:aws:iam::111122223333:root"


def statement(**overrides: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "Sid": "S",
        "Effect": "Allow",
        "Principal": {"AWS": ROOT},
        "Action": "kms:*",
        "Resource": "*",
    }
    for k, v in overrides.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    return s


def doc(*statements: dict[str, Any], **top: Any) -> str:
    d: dict[str, Any] = {"Version": "2012-10-17", "Statement": list(statements) or [statement()]}
    for k, v in top.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d, ensure_ascii=False)


def escaped(text: str) -> str:
    """The same policy with every non-ASCII character as a JSON escape (which KMS's
    character set admits: the characters only appear once the JSON is parsed)."""
    return json.dumps(json.loads(text))


def errors(text: str) -> list[tuple[str, str]]:
    return [(f.code, f.path) for f in parse_policy(text).findings if f.severity is Severity.ERROR]


def warnings(text: str) -> list[tuple[str, str]]:
    return [(f.code, f.path) for f in parse_policy(text).findings if f.severity is Severity.WARNING]


def test_the_seed_example_policy_is_clean() -> None:
    assert parse_policy(SEED).findings == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("EMPTY_POLICY", "")]),
        ("x" * (MAX_POLICY_BYTES + 1), [("POLICY_TOO_LARGE", "")]),
        # 16,385 two-byte characters: under the limit in characters, over it in bytes
        (doc(statement(Sid="é" * 16_385)), [("POLICY_TOO_LARGE", "")]),
        (doc(statement(Sid="snow ☃")), [("INVALID_CHARACTER", "")]),
        ('{"Version": "2012-10-17",\x0b"Statement": []}', [("INVALID_CHARACTER", "")]),
        ("{not json", [("INVALID_JSON", "")]),
        ('{"Version": NaN}', [("INVALID_JSON", "")]),
        ("[]", [("NOT_AN_OBJECT", "")]),
        ("[" * 16_000 + "]" * 16_000, [("NESTED_TOO_DEEPLY", "")]),
        (
            '{"Version": "2012-10-17", "Id": ' + "[" * 20 + "]" * 20 + "}",
            [("NESTED_TOO_DEEPLY", "")],
        ),
        ('"text"', [("NOT_AN_OBJECT", "")]),
        (
            '{"Version":"2012-10-17","Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}}',
            [("DUPLICATE_KEY", "Version")],
        ),
        (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}]}',
            [("DUPLICATE_KEY", "Statement[0].Effect")],
        ),
        (doc(Version="2020-01-01"), [("INVALID_VERSION", "Version")]),
        (doc(Id=5), [("INVALID_ID", "Id")]),
        (doc(Extra=1), [("UNKNOWN_ELEMENT", "Extra")]),
        (json.dumps({"Version": "2012-10-17"}), [("MISSING_STATEMENT", "Statement")]),
        (
            json.dumps({"Version": "2012-10-17", "Statement": []}),
            [("INVALID_STATEMENT", "Statement")],
        ),
        (
            json.dumps({"Version": "2012-10-17", "Statement": ["x"]}),
            [("INVALID_STATEMENT", "Statement[0]")],
        ),
        (doc(statement(Effect="allow")), [("INVALID_EFFECT", "Statement[0].Effect")]),
        (doc(statement(Effect=None)), [("INVALID_EFFECT", "Statement[0].Effect")]),
        (doc(statement(Principal=None)), [("MISSING_PRINCIPAL", "Statement[0].Principal")]),
        (doc(statement(NotPrincipal={"AWS": ROOT})), [("CONFLICTING_ELEMENTS", "Statement[0]")]),
        (
            doc(statement(Principal={"AWS": "bob"})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.AWS")],
        ),
        (
            doc(statement(Principal={"AWS": []})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.AWS")],
        ),
        (
            doc(statement(Principal={"AWS": [ROOT, "arn:aws:iam::111122223333:role/*"]})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.AWS[1]")],
        ),
        (
            doc(statement(Principal={"AWS": "arn:aws:iam::111122223333:group/admins"})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.AWS")],
        ),
        (
            escaped(
                doc(
                    statement(
                        Principal={
                            "Federated": "arn:aws:iam::" + "\u0661" * 12 + ":saml-provider/x"
                        }
                    )
                )
            ),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.Federated")],
        ),
        (
            doc(statement(Principal={"AWS": [ROOT, "arn:aws-cn:iam::111122223333:group/a/b"]})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.AWS[1]")],
        ),
        (
            doc(
                statement(
                    Effect="Deny",
                    Principal=None,
                    NotPrincipal={"AWS": "arn:aws:iam::111122223333:group/admins"},
                )
            ),
            [("INVALID_PRINCIPAL", "Statement[0].NotPrincipal.AWS")],
        ),
        (
            doc(statement(Principal={"User": ROOT})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.User")],
        ),
        (
            doc(statement(Principal={"Service": "not a service"})),
            [("INVALID_PRINCIPAL", "Statement[0].Principal.Service")],
        ),
        (doc(statement(Principal="everyone")), [("INVALID_PRINCIPAL", "Statement[0].Principal")]),
        (doc(statement(Action=None)), [("MISSING_ACTION", "Statement[0].Action")]),
        (doc(statement(NotAction="kms:Decrypt")), [("CONFLICTING_ELEMENTS", "Statement[0]")]),
        (doc(statement(Action="s3:GetObject")), [("INVALID_ACTION", "Statement[0].Action")]),
        (
            doc(statement(Action=["kms:Decrypt", "kms:Frobnicate"])),
            [("UNKNOWN_ACTION", "Statement[0].Action[1]")],
        ),
        (doc(statement(Action=None, NotAction="*")), [("NEVER_MATCHES", "Statement[0].NotAction")]),
        (doc(statement(Resource=None)), [("MISSING_RESOURCE", "Statement[0].Resource")]),
        (
            doc(statement(Resource="arn:aws:s3:::bucket")),
            [("NEVER_MATCHES", "Statement[0].Resource")],
        ),
        (
            escaped(doc(statement(Resource="arn:aws:kms:us-east-1:" + "\u0661" * 12 + ":key/*"))),
            [("NEVER_MATCHES", "Statement[0].Resource")],  # no key's ARN has such digits
        ),
        (
            doc(statement(Resource=None, NotResource="*")),
            [("NEVER_MATCHES", "Statement[0].NotResource")],
        ),
        (doc(statement(Condition="x")), [("INVALID_CONDITION", "Statement[0].Condition")]),
        (
            doc(statement(Condition={"StringEqualz": {"kms:CallerAccount": "1"}})),
            [("INVALID_CONDITION_OPERATOR", "Statement[0].Condition.StringEqualz")],
        ),
        (
            doc(statement(Condition={"StringEquals": {"kms:CallerAccount": {"a": 1}}})),
            [("INVALID_CONDITION_VALUE", "Statement[0].Condition.StringEquals.kms:CallerAccount")],
        ),
        (
            doc(statement(Condition={"StringEquals": {"kms:CallerAccount": []}})),
            [("INVALID_CONDITION_VALUE", "Statement[0].Condition.StringEquals.kms:CallerAccount")],
        ),
        (doc(statement(Sid=3)), [("INVALID_SID", "Statement[0].Sid")]),
        (doc(statement(Sid="A"), statement(Sid="A")), [("DUPLICATE_SID", "Statement[1].Sid")]),
        (doc(statement(Bogus=1)), [("UNKNOWN_ELEMENT", "Statement[0].Bogus")]),
        (
            doc(statement(), statement(Sid="B", Principal={"AWS": "nope"})),
            [("INVALID_PRINCIPAL", "Statement[1].Principal.AWS")],
        ),
    ],
)
def test_kms_rules_refuse_with_code_and_path(text: str, expected: list[tuple[str, str]]) -> None:
    assert errors(text) == expected


@pytest.mark.parametrize(
    "principal",
    [
        "*",
        "111122223333",
        ROOT,
        "arn:aws:iam::111122223333:role/path/to/Role",
        "arn:aws:iam::111122223333:user/Alice",
        "arn:aws:sts::111122223333:assumed-role/Role/session",
        "arn:aws-cn:iam::111122223333:root",
    ],
)
def test_valid_aws_principal_forms_are_accepted(principal: str) -> None:
    assert (
        errors(
            doc(
                statement(
                    Principal={"AWS": principal},
                    Condition={"Bool": {"aws:SecureTransport": "true"}},
                )
            )
        )
        == []
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            doc(statement(Principal="*")),
            [("PUBLIC_KMS_ALL", "Statement[0].Principal")],
        ),
        (
            doc(statement(Principal={"AWS": "*"}, Action="kms:Decrypt")),
            [("PUBLIC_ACCESS", "Statement[0].Principal")],
        ),
        (
            doc(statement(Principal={"AWS": "arn:aws:iam::111122223333:role/App"})),
            [("KMS_ALL_NON_ROOT", "Statement[0].Action")],
        ),
        (
            doc(statement(Resource="arn:aws:kms:us-east-1:111122223333:key/*")),
            [("RESOURCE_NOT_STAR", "Statement[0].Resource")],
        ),
        (doc(Version="2008-10-17"), [("LEGACY_VERSION", "Version")]),
        (doc(Version=None), [("MISSING_VERSION", "Version")]),
        (
            doc(statement(Principal=None, NotPrincipal={"AWS": ROOT}, Action="kms:Decrypt")),
            [("NOT_PRINCIPAL_ALLOW", "Statement[0].NotPrincipal")],
        ),
    ],
)
def test_warnings_go_beyond_kms(text: str, expected: list[tuple[str, str]]) -> None:
    assert errors(text) == []
    assert warnings(text) == expected


def test_a_conditional_public_grant_is_not_warned_about() -> None:
    text = doc(
        statement(Principal="*", Condition={"StringEquals": {"kms:CallerAccount": "111122223333"}})
    )
    assert parse_policy(text).findings == ()


def test_a_resource_naming_another_key_never_matches_this_key() -> None:
    text = doc(statement(Resource="arn:aws:kms:us-east-1:111122223333:key/other"))
    parsed = parse_policy(text)
    assert parsed.document is not None
    this_key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert [(f.code, f.path) for f in key_resource_findings(parsed.document, this_key)] == [
        ("NEVER_MATCHES", "Statement[0].Resource")
    ]
    assert (
        list(key_resource_findings(parsed.document, "arn:aws:kms:us-east-1:111122223333:key/other"))
        == []
    )


def test_an_iam_group_is_refused_saying_groups_are_not_principals() -> None:
    text = doc(statement(Principal={"AWS": "arn:aws:iam::111122223333:group/admins"}))
    (finding,) = [f for f in parse_policy(text).findings if f.severity is Severity.ERROR]
    assert finding.code == "INVALID_PRINCIPAL"
    assert "groups are not principals" in finding.message


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (doc(statement(Sid="a\ud800")), [("INVALID_CHARACTER", "Statement[0].Sid")]),
        (doc(statement(Sid="\udc00")), [("INVALID_CHARACTER", "Statement[0].Sid")]),
        (
            doc(statement(Action=["kms:Decrypt", "kms:\ud800"])),
            [("INVALID_CHARACTER", "Statement[0].Action[1]")],
        ),
        (
            doc(statement(Condition={"StringEquals": {"kms:CallerAccount": "\ud800"}})),
            [("INVALID_CHARACTER", "Statement[0].Condition.StringEquals.kms:CallerAccount")],
        ),
        (doc(statement(**{"\ud800": 1})), [("INVALID_CHARACTER", "Statement[0].\\ud800")]),
        (doc(Id="\ud800"), [("INVALID_CHARACTER", "Id")]),
    ],
)
def test_an_unpaired_surrogate_escape_is_an_invalid_character(
    document: str, expected: list[tuple[str, str]]
) -> None:
    text = json.dumps(json.loads(document))  # plain ASCII: the surrogate is an escape
    assert text.isascii() and "\\ud" in text
    parsed = parse_policy(text)
    assert [(f.code, f.path) for f in parsed.findings] == expected
    assert parsed.document is None
    assert all(f.message.isascii() and f.path.isascii() for f in parsed.findings)


def test_a_surrogate_pair_escape_is_one_character_and_no_finding() -> None:
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement(Sid="\U0001f600")]})
    assert "\\ud83d\\ude00" in text
    assert errors(text) == []
