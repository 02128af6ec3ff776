"""The member-account role (deploy/member-account): assumable only by the service with the
ExternalId, session tags allowed for the caller tag only, and the same KMS permissions as
the home account's policy (deploy/iam-policy.json); the Terraform twin says the same."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from kms_policy_service.accounts import CALLER_TAG, ROLE_ARN_RE

ROOT = Path(__file__).resolve().parent.parent
MEMBER = ROOT / "deploy" / "member-account"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form intrinsics (!Ref, !Sub, !GetAtt) as plain values."""


for _tag in ("!Ref", "!Sub", "!GetAtt"):
    _CfnLoader.add_constructor(_tag, lambda loader, node: {node.tag: loader.construct_scalar(node)})


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((MEMBER / "role.cfn.yaml").read_text(), _CfnLoader)
    return loaded


def test_only_the_service_may_assume_the_role_and_only_with_the_external_id() -> None:
    role = template()["Resources"]["Role"]["Properties"]
    trust = {s["Sid"]: s for s in role["AssumeRolePolicyDocument"]["Statement"]}
    assume = trust["ServiceAssumes"]
    assert assume["Action"] == "sts:AssumeRole"
    assert assume["Principal"] == {"AWS": {"!Ref": "ServicePrincipalArn"}}
    assert assume["Condition"] == {"StringEquals": {"sts:ExternalId": {"!Ref": "ExternalId"}}}
    tag = trust["ServiceTagsSessionsWithTheCaller"]
    assert tag["Action"] == "sts:TagSession"
    assert tag["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"] == [CALLER_TAG]
    assert ROLE_ARN_RE.fullmatch(f"arn:aws:iam::222222222222:role/{role['RoleName']}")


def test_the_role_may_do_what_the_home_policy_allows_and_nothing_else() -> None:
    home = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())["Statement"][0]
    (granted,) = template()["Resources"]["Role"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"
    ]
    assert sorted(granted["Action"]) == sorted(home["Action"])
    assert list(granted["Condition"]["StringEquals"]) == list(home["Condition"]["StringEquals"])


def test_the_terraform_twin_has_the_same_trust_and_actions() -> None:
    text = (MEMBER / "role.tf").read_text()
    assert '"sts:AssumeRole"' in text and '"sts:TagSession"' in text
    assert 'variable = "sts:ExternalId"' in text and f'values   = ["{CALLER_TAG}"]' in text
    home = json.loads((ROOT / "deploy" / "iam-policy.json").read_text())["Statement"][0]
    assert sorted(re.findall(r'"(kms:\w+)"', text)) == sorted(home["Action"])
