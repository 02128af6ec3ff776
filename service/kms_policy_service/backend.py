"""The KMS backend interface: the five calls the service makes, and their values.

The real implementation (kms.AioKmsBackend) speaks to KMS over HTTP through
aiobotocore; tests and benchmarks may plug in an in-process fake.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Protocol


class Operation(enum.StrEnum):
    """The KMS operations the service calls (the names KMS, CloudTrail and metrics use)."""

    DESCRIBE_KEY = "DescribeKey"
    GET_KEY_POLICY = "GetKeyPolicy"
    PUT_KEY_POLICY = "PutKeyPolicy"
    LIST_KEY_POLICIES = "ListKeyPolicies"


# The STS operation behind a member account's credentials (never rate-limited as KMS's).
ASSUME_ROLE = "AssumeRole"


def default_key_policy(account: str, partition: str = "aws") -> str:
    """The policy KMS gives a key created without one (KMS Developer Guide, "Default key
    policy"): the account root may do everything, so IAM policies decide."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        },
        indent=2,
    )


@dataclass(frozen=True)
class KeyMetadata:
    """What DescribeKey tells the service about a key."""

    arn: str
    key_id: str
    key_manager: str  # "CUSTOMER" or "AWS"
    key_state: str

    @property
    def aws_managed(self) -> bool:
        return self.key_manager == "AWS"


@dataclass(frozen=True)
class CallerIdentity:
    """STS GetCallerIdentity: the service's own account and principal."""

    account: str
    arn: str


@dataclass(frozen=True)
class PolicyPage:
    names: tuple[str, ...]
    next_marker: str | None


class KmsFailure(Exception):
    """A KMS call failed; `code` is KMS's error code or one of errors' transport pseudo-codes.

    `operation` is set when what failed was not the KMS call itself but getting a member
    account's credentials for it (ASSUME_ROLE): the KMS request was then never sent.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        http_status: int | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status
        self.operation = operation


class KmsBackend(Protocol):
    """The KMS operations the service uses, per Region. Failures raise KmsFailure.

    The account is the one a key ARN or alias ARN names (the home account otherwise);
    `caller` is the identity the call is made for (a member account's session tag).
    """

    async def describe_key(self, key_id: str, *, region: str, caller: str = "") -> KeyMetadata: ...

    async def get_key_policy(
        self, key_arn: str, policy_name: str, *, region: str, caller: str = ""
    ) -> str: ...

    async def put_key_policy(
        self,
        key_arn: str,
        policy_name: str,
        policy: str,
        *,
        bypass_lockout_check: bool,
        region: str,
        caller: str = "",
    ) -> None: ...

    async def list_key_policies(
        self,
        key_arn: str,
        *,
        limit: int | None,
        marker: str | None,
        region: str,
        caller: str = "",
    ) -> PolicyPage: ...

    async def get_caller_identity(self) -> CallerIdentity: ...
