"""Member accounts: flags, the account a key names, session tag values, who the service is
in each account, and keys resolved in their own account (in-memory backend)."""

from __future__ import annotations

import pytest

from kms_policy_service.accounts import (
    CALLER_IDENTITY_NOT_TAGGABLE,
    CALLER_IDENTITY_TOO_LONG,
    AccountRoles,
    account_of,
    session_tag_value,
)
from kms_policy_service.cli import settings_from
from kms_policy_service.errors import InvalidArgument, PermissionDenied, ServiceError
from kms_policy_service.gateway import KmsGateway, RetryPolicy
from kms_policy_service.memory_kms import Fault, MemoryKms
from kms_policy_service.ratelimit import NoLimit
from kms_policy_service.resolver import KeyResolver
from kms_policy_service.settings import SettingsError
from kms_policy_service.validation import ServicePrincipal, parse_key_id
from kms_policy_service.validation.lockout import ServicePrincipals
from tests.unit.test_resolver import ctx
from tests.unit.test_resolver import resolver as resolve_with

MEMBER = "222222222222"
ROLE = f"arn:aws:iam::{MEMBER}:role/ops/kms-policy-service"


def test_account_roles_come_from_repeated_flags_or_one_comma_separated_variable() -> None:
    other = "arn:aws:iam::333333333333:role/kms"
    by_flags = settings_from(
        ["--account-role", f"{MEMBER}={ROLE}", "--account-role", f"333333333333={other}"], {}
    )
    by_env = settings_from([], {"KMS_POLICY_ACCOUNT_ROLE": f"{MEMBER}={ROLE},333333333333={other}"})
    assert by_flags.account_roles == by_env.account_roles == {MEMBER: ROLE, "333333333333": other}
    tagged = settings_from(
        [
            "--caller-session-tags",
            "--assume-role-external-id",
            "x-1",
            "--account-rate-limit",
            "5:10",
        ],
        {},
    )
    assert tagged.caller_session_tags and tagged.assume_role_external_id == "x-1"
    assert (tagged.account_rate_limit.rate, tagged.account_rate_limit.burst) == (5, 10)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "item",
    [
        "222222222222",  # no role
        "22222=arn:aws:iam::22222:role/x",  # not 12 digits
        "\u0662" * 12 + "=arn:aws:iam::" + "\u0662" * 12 + ":role/x",  # non-ASCII digits
        "222222222222=arn:aws:iam::222222222222:role/r\u00f4le",  # IAM names are ASCII
        "222222222222=arn:aws:iam::333333333333:role/x",  # the role is in another account
        "222222222222=arn:aws:iam::222222222222:user/x",  # not a role
    ],
)
def test_a_malformed_account_role_is_a_configuration_error(item: str) -> None:
    with pytest.raises(SettingsError, match="--account-role"):
        settings_from(["--account-role", item], {})


def test_only_arns_name_an_account_alias_names_and_bare_ids_mean_home() -> None:
    assert account_of(f"arn:aws:kms:us-east-1:{MEMBER}:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert account_of(f"arn:aws:kms:eu-west-1:{MEMBER}:alias/app") == MEMBER
    assert account_of("alias/app") is None
    assert account_of("1234abcd-12ab-34cd-56ef-1234567890ab") is None
    roles = AccountRoles({MEMBER: ROLE})
    assert roles.role_for(f"arn:aws:kms:us-east-1:{MEMBER}:alias/app") == (MEMBER, ROLE)
    assert roles.role_for("arn:aws:kms:us-east-1:444444444444:alias/app") is None


def test_session_tag_values_take_spiffe_ids_and_refuse_what_a_tag_cannot_hold() -> None:
    assert session_tag_value("spiffe://cluster.local/ns/team/sa/app-1") == ""
    assert session_tag_value("a" * 256) == ""
    assert session_tag_value("a" * 257) == CALLER_IDENTITY_TOO_LONG
    for bad in ("", "cn:x,y", "a\nb", 'x"y', "a*b"):
        assert session_tag_value(bad) == CALLER_IDENTITY_NOT_TAGGABLE, bad


def test_the_service_is_the_member_role_in_a_member_account_and_itself_elsewhere() -> None:
    home = ServicePrincipal.from_caller_identity(
        "123456789012", "arn:aws:sts::123456789012:assumed-role/svc/pod"
    )
    principals = ServicePrincipals(
        home, {MEMBER: ServicePrincipal.for_role(ROLE, "kms-policy-service")}
    )
    member = principals.for_key(f"arn:aws:kms:us-east-1:{MEMBER}:alias/app")
    assert (member.account, member.arn) == (MEMBER, ROLE)
    assert member.is_named_by(f"arn:aws:iam::{MEMBER}:root")
    assert member.is_named_by(f"arn:aws:iam::{MEMBER}:role/kms-policy-service")  # path-free
    assert not member.is_named_by(home.arn)
    assert principals.for_key("alias/app") is home
    assert principals.for_key(None) is home
    assert principals.for_key("arn:aws:kms:us-east-1:444444444444:key/x") is home


def resolver(kms: MemoryKms) -> KeyResolver:
    return resolve_with(kms, max_entries=10, accounts=AccountRoles({MEMBER: ROLE}))


async def test_a_member_key_resolves_in_its_account_and_an_unlisted_one_is_refused() -> None:
    kms = MemoryKms()
    arn = kms.create_key(account=MEMBER)
    assert (await resolver(kms).resolve(parse_key_id(arn), ctx())).arn == arn
    unlisted = kms.create_key(account="444444444444")
    with pytest.raises(InvalidArgument) as refused:
        await resolver(kms).resolve(parse_key_id(unlisted), ctx())
    assert refused.value.reason == "CROSS_ACCOUNT_KEY"


async def test_a_member_alias_arn_pointing_into_another_account_is_refused() -> None:
    kms = MemoryKms()
    kms.alias("alias/app", kms.create_key())  # a home key behind the member's alias ARN
    with pytest.raises(InvalidArgument) as refused:
        await resolver(kms).resolve(
            parse_key_id(f"arn:aws:kms:us-east-1:{MEMBER}:alias/app"), ctx()
        )
    assert refused.value.reason == "CROSS_ACCOUNT_KEY"


async def test_a_denied_assume_role_fails_member_keys_only_with_its_own_reason() -> None:
    kms = MemoryKms(faults=[Fault("AssumeRole", error_code="AccessDenied", http_status=403)])
    member, home = kms.create_key(account=MEMBER), kms.create_key()
    with pytest.raises(ServiceError) as denied:
        await resolver(kms).resolve(parse_key_id(member), ctx())
    assert isinstance(denied.value, PermissionDenied)
    assert denied.value.reason == "ASSUME_ROLE_DENIED"
    assert denied.value.metadata["kmsOperation"] == "AssumeRole"
    assert (await resolver(kms).resolve(parse_key_id(home), ctx())).arn == home


async def test_session_facts_name_the_account_role_and_with_tags_the_caller() -> None:
    kms = MemoryKms()
    member = kms.create_key(account=MEMBER)
    tagged = KmsGateway(
        kms,
        NoLimit(),
        RetryPolicy(1, 0.01, 0.01, 0.0),
        max_concurrency=1,
        max_waiters=1,
        home_account=kms.account,
        accounts=AccountRoles({MEMBER: ROLE}, caller_session_tags=True),
    )
    assert tagged.session_facts(member, ctx()) == {
        "account": MEMBER,
        "role_arn": ROLE,
        "session_identity": "local",
    }
    assert tagged.session_facts("alias/x", ctx()) == {"account": kms.account}
