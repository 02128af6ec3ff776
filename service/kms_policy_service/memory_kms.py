"""An in-memory KmsBackend: keys, aliases and policies in a dict, zero latency.

For benchmarks of the service's own cost and for tests of layers above the
backend. The service's real path is always kms.AioKmsBackend over HTTP.
"""

from __future__ import annotations

import json
import uuid

from kms_policy_service.backend import CallerIdentity, KeyMetadata, KmsFailure, PolicyPage


class MemoryKms:
    def __init__(self, *, account: str = "123456789012", region: str = "us-east-1") -> None:
        self.account = account
        self.region = region
        self._policies: dict[str, dict[str, str]] = {}
        self._aliases: dict[str, str] = {}
        self._managers: dict[str, str] = {}

    def create_key(
        self, policy: str | None = None, *, alias: str | None = None, manager: str = "CUSTOMER"
    ) -> str:
        key_id = str(uuid.uuid4())
        arn = f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"
        self._policies[arn] = {"default": policy or self.default_policy()}
        self._managers[arn] = manager
        if alias:
            self._aliases[alias] = arn
        return arn

    def default_policy(self) -> str:
        return json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "Enable IAM User Permissions",
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{self.account}:root"},
                        "Action": "kms:*",
                        "Resource": "*",
                    }
                ],
            }
        )

    def alias(self, alias: str, key_arn: str) -> None:
        self._aliases[alias] = key_arn

    def _arn(self, key_id: str) -> str:
        if key_id in self._policies:
            return key_id
        name = (
            key_id.split(":", 5)[-1]
            if key_id.startswith("arn:") and ":alias/" in key_id
            else key_id
        )
        if name in self._aliases:
            return self._aliases[name]
        for arn in self._policies:
            if arn.endswith("/" + key_id):
                return arn
        raise KmsFailure("NotFoundException", f"Key '{key_id}' does not exist", http_status=400)

    async def describe_key(self, key_id: str, *, region: str) -> KeyMetadata:
        arn = self._arn(key_id)
        return KeyMetadata(arn, arn.rsplit("/", 1)[1], self._managers[arn], "Enabled")

    async def get_key_policy(self, key_arn: str, policy_name: str, *, region: str) -> str:
        policies = self._policies[self._arn(key_arn)]
        if policy_name not in policies:
            raise KmsFailure("NotFoundException", "No such policy exists", http_status=400)
        return policies[policy_name]

    async def put_key_policy(
        self,
        key_arn: str,
        policy_name: str,
        policy: str,
        *,
        bypass_lockout_check: bool,
        region: str,
    ) -> None:
        self._policies[self._arn(key_arn)][policy_name] = policy

    async def list_key_policies(
        self, key_arn: str, *, limit: int | None, marker: str | None, region: str
    ) -> PolicyPage:
        return PolicyPage(tuple(self._policies[self._arn(key_arn)]), None)

    async def get_caller_identity(self) -> CallerIdentity:
        return CallerIdentity(
            self.account, f"arn:aws:sts::{self.account}:assumed-role/kms-policy-service/bench"
        )
