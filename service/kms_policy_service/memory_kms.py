"""An in-memory KmsBackend: keys, aliases and policies in a dict, with scripted faults.

For unit tests of the layers above the backend (servicer, resolver, gateway) and for
benchmarks of the service's own cost. `faults` are ordered rules like those of the
HTTP fault injector the integration tests put in front of moto: the first rule that
matches an operation fails it with a KMS error code, delays it, or both; a rule for
"AssumeRole" fails the calls on other accounts' keys as getting their credentials
would. Every call is recorded in `calls`. The service's real path is always
kms.AioKmsBackend over HTTP.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from kms_policy_service.backend import (
    ASSUME_ROLE,
    CallerIdentity,
    KeyMetadata,
    KmsFailure,
    PolicyPage,
    default_key_policy,
)
from kms_policy_service.validation.keys import account_of


@dataclass
class Fault:
    operation: str  # an Operation value, or "*" for any
    error_code: str = ""  # "": answer normally (after `delay`)
    http_status: int = 400
    delay: float = 0.0  # seconds before answering or failing
    times: int | None = None  # None: every matching call
    gate: asyncio.Event | None = None  # set: held (after `delay`) until the event is set


@dataclass
class Call:
    operation: str
    key_id: str
    caller: str = ""
    abandoned: bool = False  # the caller gave up (was cancelled) before the answer


@dataclass
class MemoryKms:
    account: str = "123456789012"
    region: str = "us-east-1"
    faults: list[Fault] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._policies: dict[str, dict[str, str]] = {}
        self._aliases: dict[str, str] = {}
        self._managers: dict[str, str] = {}

    def create_key(
        self,
        policy: str | None = None,
        *,
        alias: str | None = None,
        manager: str = "CUSTOMER",
        account: str | None = None,  # another (member) account's key
    ) -> str:
        key_id = str(uuid.uuid4())
        account = account or self.account
        arn = f"arn:aws:kms:{self.region}:{account}:key/{key_id}"
        self._policies[arn] = {"default": policy or default_key_policy(account)}
        self._managers[arn] = manager
        if alias:
            self._aliases[alias] = arn
        return arn

    def alias(self, alias: str, key_arn: str) -> None:
        self._aliases[alias] = key_arn

    def operations(self) -> list[str]:
        return [c.operation for c in self.calls]

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
            if arn.endswith("/" + key_id) and f":{self.account}:" in arn:
                return arn
        raise KmsFailure("NotFoundException", f"Key '{key_id}' does not exist", http_status=400)

    async def _enter(self, operation: str, key_id: str, caller: str = "") -> None:
        """Record the call and apply the first matching fault."""
        call = Call(operation, key_id, caller)
        self.calls.append(call)
        member = account_of(key_id) not in (None, self.account)
        if member and self._fault(ASSUME_ROLE) is not None:
            operation = ASSUME_ROLE  # the member account's credentials fail first
        fault = self._fault(operation)
        if fault is None:
            return
        if fault.times is not None:
            fault.times -= 1
        if fault.delay or fault.gate is not None:
            try:
                await asyncio.sleep(fault.delay)
                if fault.gate is not None:
                    await fault.gate.wait()
            except asyncio.CancelledError:
                call.abandoned = True
                raise
        if fault.error_code:
            raise KmsFailure(
                fault.error_code,
                "injected",
                http_status=fault.http_status,
                operation=ASSUME_ROLE if operation == ASSUME_ROLE else None,
            )

    def _fault(self, operation: str) -> Fault | None:
        return next(
            (
                f
                for f in self.faults
                if f.operation in (operation, "*") and (f.times is None or f.times > 0)
            ),
            None,
        )

    async def describe_key(self, key_id: str, *, region: str, caller: str = "") -> KeyMetadata:
        await self._enter("DescribeKey", key_id, caller)
        arn = self._arn(key_id)
        return KeyMetadata(arn, arn.rsplit("/", 1)[1], self._managers[arn], "Enabled")

    async def get_key_policy(
        self, key_arn: str, policy_name: str, *, region: str, caller: str = ""
    ) -> str:
        await self._enter("GetKeyPolicy", key_arn, caller)
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
        caller: str = "",
    ) -> None:
        await self._enter("PutKeyPolicy", key_arn, caller)
        self._policies[self._arn(key_arn)][policy_name] = policy

    async def list_key_policies(
        self,
        key_arn: str,
        *,
        limit: int | None,
        marker: str | None,
        region: str,
        caller: str = "",
    ) -> PolicyPage:
        await self._enter("ListKeyPolicies", key_arn, caller)
        return PolicyPage(tuple(self._policies[self._arn(key_arn)]), None)

    async def get_caller_identity(self) -> CallerIdentity:
        return CallerIdentity(
            self.account, f"arn:aws:sts::{self.account}:assumed-role/kms-policy-service/bench"
        )
