"""Writing a key policy: under the key's lock, read-compare-write, the intent on disk first.

    lock -> read the current policy (fresh) -> compare the etag -> audit intent
         -> PutKeyPolicy -> audit outcome

When the request reached KMS but its answer did not come back, the outcome is
unknown: it is recorded as such and settled by reading the policy back, inline if
the caller's deadline allows (the call then succeeds if the new policy is there),
else after the answer, within SETTLE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kms_policy_service.audit import PutAudit, change_summary
from kms_policy_service.errors import (
    Aborted,
    DeadlineExceeded,
    PreconditionViolation,
    ServiceError,
)
from kms_policy_service.etag import policy_etag
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.locks import KeyLocks
from kms_policy_service.reads import PolicyReads
from kms_policy_service.request import RequestContext
from kms_policy_service.resolver import ResolvedKey
from kms_policy_service.validation.commands import PutCommand

SETTLE_MIN_SECONDS = 0.25  # of the caller's deadline left, to read back inline
SETTLE_SECONDS = 5.0  # for a read-back after the answer (also at shutdown)


class PolicyWriter:
    def __init__(
        self, gateway: KmsGateway, reads: PolicyReads, locks: KeyLocks, *, max_lock_wait: float
    ) -> None:
        self._gateway = gateway
        self._reads = reads
        self._locks = locks
        self._max_lock_wait = max_lock_wait
        self._settling: set[asyncio.Task[None]] = set()

    async def write(
        self,
        command: PutCommand,
        key: ResolvedKey,
        ctx: RequestContext,
        audit: PutAudit,
        *,
        check: Callable[[str], None] | None = None,
    ) -> None:
        """`check`: judges the change against the policy now in place (scopes, protected
        statements); it runs under the lock, on the policy the write replaces."""
        audit.note(**self._gateway.session_facts(key.arn, ctx))  # account, role, session
        async with self._locked(key, ctx):
            if audit.enabled or command.expected_etag or check is not None:
                previous = await self._read(key, command.policy_name, ctx)  # never cached
                previous_etag = policy_etag(previous)
                audit.note(previous_etag=previous_etag)
                if command.expected_etag and previous_etag != command.expected_etag:
                    raise etag_mismatch(key.arn, previous_etag, command.expected_etag)
                if check is not None:
                    check(previous)
                if audit.enabled:
                    assert command.policy.document is not None
                    await audit.intent(
                        previous_policy=previous,
                        changes=change_summary(_json_or_none(previous), command.policy.document),
                    )
            await audit.sending()
            await self._send(command, key, ctx, audit)
        if audit.state == "sending":
            await audit.outcome(None)

    async def drain(self) -> None:
        """Let read-backs of unknown outcomes finish (each bounded by SETTLE_SECONDS)."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=SETTLE_SECONDS)

    @contextlib.asynccontextmanager
    async def _locked(self, key: ResolvedKey, ctx: RequestContext) -> AsyncIterator[None]:
        deadline_bound = ctx.remaining() <= self._max_lock_wait
        try:
            async with self._locks.hold(key.arn, wait=min(ctx.remaining(), self._max_lock_wait)):
                yield
        except TimeoutError as exc:
            if deadline_bound:
                raise DeadlineExceeded(
                    "the call's deadline ran out waiting for another write to this key",
                    metadata={"keyArn": key.arn},
                ) from exc
            raise Aborted(
                "another write to this key is in progress; retry shortly",
                reason="KEY_WRITE_IN_PROGRESS",
                metadata={"keyArn": key.arn},
                retry_after=1.0,
            ) from exc

    async def _send(
        self, command: PutCommand, key: ResolvedKey, ctx: RequestContext, audit: PutAudit
    ) -> None:
        try:
            await self._gateway.put_key_policy(
                key.arn,
                command.policy_name,
                command.policy.text,
                bypass_lockout_check=command.bypass_lockout_check,
                region=key.region,
                ctx=ctx,
            )
        except (ServiceError, asyncio.CancelledError) as exc:
            if not ctx.kms_uncertain:
                raise  # KMS answered (or was never asked): the policy did not change
            self._reads.invalidate(key.arn, command.policy_name)
            what = exc.code.name if isinstance(exc, ServiceError) else "CANCELLED"
            await audit.unknown(what)
            inline = not isinstance(exc, asyncio.CancelledError)
            if inline and ctx.remaining() > SETTLE_MIN_SECONDS:
                applied = await self._read_back(key, command.policy_name, ctx, audit)
                if applied:
                    return
                if applied is not None:
                    raise
            self._settle_later(key, command.policy_name, ctx, audit)
            if isinstance(exc, ServiceError):
                exc.metadata["policyChange"] = "UNKNOWN"
                exc.message += (
                    "; the request reached KMS, so the change may have taken effect: "
                    "read the policy to find out"
                )
            raise
        self._reads.invalidate(key.arn, command.policy_name)

    def _settle_later(
        self, key: ResolvedKey, name: str, ctx: RequestContext, audit: PutAudit
    ) -> None:
        settle_ctx = RequestContext(
            request_id=ctx.request_id,
            method="SettlePutKeyPolicy",
            caller=ctx.caller,
            peer="",
            rate_key="kms-policy-service:settle",
            deadline=time.monotonic() + SETTLE_SECONDS,
        )

        async def settle() -> None:
            if await self._read_back(key, name, settle_ctx, audit) is None:
                await audit.settled("UNSETTLED", "the policy could not be read back")

        task = asyncio.create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _read_back(
        self, key: ResolvedKey, name: str, ctx: RequestContext, audit: PutAudit
    ) -> bool | None:
        """Read the policy once; settle whether the write took effect. None: no answer."""
        try:
            current = policy_etag(await self._read(key, name, ctx))
        except ServiceError:
            return None
        if current == audit.get("new_etag"):
            outcome = "APPLIED"
        elif audit.get("previous_etag") is None:
            outcome = "NOT_APPLIED_OR_CHANGED_ELSEWHERE"
        elif current == audit.get("previous_etag"):
            outcome = "NOT_APPLIED"
        else:
            outcome = "CHANGED_ELSEWHERE"
        await audit.settled(outcome, f"read back: etag {current}")
        return outcome == "APPLIED"

    async def _read(self, key: ResolvedKey, name: str, ctx: RequestContext) -> str:
        return await self._gateway.get_key_policy(key.arn, name, region=key.region, ctx=ctx)


def etag_mismatch(key_arn: str, current: str, expected: str) -> Aborted:
    return Aborted(
        "the key policy changed since it was read (etag mismatch); "
        "read it again and reapply your change",
        reason="ETAG_MISMATCH",
        metadata={"keyArn": key_arn, "currentEtag": current, "expectedEtag": expected},
        precondition_violations=[
            PreconditionViolation("ETAG", key_arn, "the policy's etag differs")
        ],
    )


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
