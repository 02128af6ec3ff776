"""PolicyService RPCs: one method each, validate -> authorize -> resolve -> call KMS -> reply."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status

from kms_policy_service import logs, metrics
from kms_policy_service.audit import AuditLog, audit_unavailable, change_summary
from kms_policy_service.authz import Authorizer
from kms_policy_service.backend import KmsBackend
from kms_policy_service.errors import (
    TOO_MANY_FINDINGS,
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    PermissionDenied,
    PreconditionViolation,
    ServiceError,
    Unauthenticated,
    clip,
    internal_error,
    to_status,
)
from kms_policy_service.etag import etag_of_document, policy_etag
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.identity import Identifier
from kms_policy_service.locks import KeyLocks
from kms_policy_service.reads import PolicyReads
from kms_policy_service.request import RequestContext
from kms_policy_service.resolver import KeyResolver, ResolvedKey
from kms_policy_service.validation import (
    Finding,
    KeyKind,
    KeyRef,
    ParsedPolicy,
    ServicePrincipal,
    Severity,
    lockout_findings,
    parse_key_id,
    parse_policy,
    policy_name_for_read,
    policy_name_for_write,
)
from kms_policy_service.validation.document import key_resource_findings
from kms_policy_service.validation.findings import errors_only, raise_for_errors
from kms_policy_service.validation.names import DEFAULT_POLICY_NAME
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PolicyService"].full_name
MAX_PAGE_SIZE = 1000  # botocore model, LimitType
_ETAG = re.compile(r"[0-9a-f]{64}")
# A Put whose effect is unknown is read back: inline if the caller has this much time
# left, else after the answer, within SETTLE_SECONDS.
SETTLE_MIN_SECONDS = 0.25
SETTLE_SECONDS = 5.0
_SEVERITY = {
    Severity.ERROR: pb.Finding.SEVERITY_ERROR,
    Severity.WARNING: pb.Finding.SEVERITY_WARNING,
}


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(
        self,
        *,
        backend: KmsBackend,
        gateway: KmsGateway,
        resolver: KeyResolver,
        principal: ServicePrincipal,
        reads: PolicyReads,
        identifier: Identifier,
        authorizer: Authorizer,
        audit: AuditLog | None,
        locks: KeyLocks,
        default_deadline: float,
        max_deadline: float | None = None,
        max_findings: int = 100,
        max_lock_wait: float = 5.0,
    ) -> None:
        self._backend = backend
        self._gateway = gateway
        self._resolver = resolver
        self._principal = principal
        self._reads = reads
        self._identifier = identifier
        self._authz = authorizer
        self._audit = audit
        self._locks = locks
        self._default_deadline = default_deadline
        self._max_deadline = max_deadline if max_deadline is not None else default_deadline
        self._max_findings = max_findings
        self._max_lock_wait = max_lock_wait
        self._settling: set[asyncio.Task[None]] = set()
        self._handling: set[asyncio.Task[Any]] = set()  # RPC handlers running now
        self.in_flight = 0  # read by the kms_policy_rpcs_in_flight gauge at scrape time

    # -- RPCs ---------------------------------------------------------------

    async def GetKeyPolicy(
        self, request: pb.GetKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeyPolicyResponse:
        return await self._run("GetKeyPolicy", context, lambda ctx: self._get(request, ctx))

    async def PutKeyPolicy(
        self, request: pb.PutKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutKeyPolicyResponse:
        return await self._run("PutKeyPolicy", context, lambda ctx: self._put(request, ctx))

    async def ListKeyPolicies(
        self, request: pb.ListKeyPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListKeyPoliciesResponse:
        return await self._run("ListKeyPolicies", context, lambda ctx: self._list(request, ctx))

    async def ValidateKeyPolicy(
        self, request: pb.ValidateKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateKeyPolicyResponse:
        return await self._run(
            "ValidateKeyPolicy", context, lambda ctx: self._validate(request, ctx)
        )

    # -- implementations ----------------------------------------------------

    async def _get(
        self, request: pb.GetKeyPolicyRequest, ctx: RequestContext
    ) -> pb.GetKeyPolicyResponse:
        ref = parse_key_id(request.key_id)
        name = policy_name_for_read(request.policy_name)
        key = await self._authorize(ctx, "GetKeyPolicy", ref) or await self._resolve(ref, ctx)
        # Concurrent identical reads share one KMS call (and the optional cache).
        policy = await self._reads.read(key.arn, name, lambda: self._read_policy(key, name, ctx))
        return pb.GetKeyPolicyResponse(
            key_arn=key.arn, policy_name=name, policy=policy, etag=policy_etag(policy)
        )

    async def _put(
        self, request: pb.PutKeyPolicyRequest, ctx: RequestContext
    ) -> pb.PutKeyPolicyResponse:
        record: dict[str, Any] = {
            "request_id": ctx.request_id,
            "caller": ctx.caller,
            "peer": ctx.peer,
            "action": "PutKeyPolicy",
            "key_id": request.key_id[:2048],
            "policy_name": request.policy_name or DEFAULT_POLICY_NAME,
            "bypass_lockout_check": request.bypass_policy_lockout_safety_check,
            "expected_etag": request.etag,
            "new_policy": request.policy,  # refused attempts are evidence too
        }
        audited = self._audit is not None and not request.validate_only
        try:
            return await self._put_checked(request, ctx, record)
        except ServiceError as err:
            if audited and record.get("phase") != "unknown":
                record.update(outcome=err.code.name, reason=err.reason, message=err.message)
                if record.get("phase") == "refused":  # anyone can cause these: bounded
                    assert self._audit is not None
                    await self._audit.record_refusal(
                        record, caller=ctx.caller, authorized=record.get("authorized") is True
                    )
                else:
                    await self._audit_write(record, durable=False)
            raise
        except asyncio.CancelledError:
            if audited and record.get("phase") == "outcome":
                record.update(outcome="CANCELLED", reason="CANCELLED")
                await self._audit_write(record, durable=False)
            raise

    async def _put_checked(
        self, request: pb.PutKeyPolicyRequest, ctx: RequestContext, record: dict[str, Any]
    ) -> pb.PutKeyPolicyResponse:
        record["phase"] = "refused"
        if self._audit is not None and not request.validate_only and not self._audit.healthy:
            raise audit_unavailable(self._audit.error or "not writable")
        ref = parse_key_id(request.key_id)
        name = policy_name_for_write(request.policy_name)
        if request.etag and not _ETAG.fullmatch(request.etag):
            raise _bad_field(
                "etag", "etag must be 64 lowercase hex characters (from a Get)", "INVALID_ETAG"
            )
        authorized_key = await self._authorize(ctx, "PutKeyPolicy", ref)
        record["authorized"] = True  # from here on, a refusal keeps the caller's whole policy
        parsed = parse_policy(request.policy)
        bypass = request.bypass_policy_lockout_safety_check
        # Before any KMS call, every finding that needs no KMS call: the document's, and
        # the lockout and resource checks against the key ARN when the caller named it
        # (else the lockout check refuses a policy that locks the service out of any key).
        known_arn = ref.raw if ref.kind is KeyKind.KEY_ARN else None
        _raise_policy_errors(
            self._policy_findings(parsed, name, key_arn=known_arn, bypass=bypass), parsed
        )
        assert parsed.document is not None  # no errors: it parsed
        key = authorized_key or await self._resolve(ref, ctx)
        record["key_arn"] = key.arn
        if key.metadata.aws_managed:
            raise FailedPrecondition(
                f"{key.arn} is an AWS-managed key: its policy can be read but never changed",
                reason="AWS_MANAGED_KEY",
                metadata={"keyArn": key.arn},
                precondition_violations=[
                    PreconditionViolation("KEY_MANAGER", key.arn, "the key is managed by AWS")
                ],
            )
        if known_arn != key.arn:
            _raise_policy_errors(self._key_findings(parsed.document, key.arn, name, bypass), None)
        new_etag = etag_of_document(parsed.document)
        record["new_etag"] = new_etag
        reply = pb.PutKeyPolicyResponse(key_arn=key.arn, policy_name=name, etag=new_etag)
        if request.validate_only:
            return reply
        deadline_bound = ctx.remaining() <= self._max_lock_wait
        try:
            async with self._locks.hold(key.arn, wait=min(ctx.remaining(), self._max_lock_wait)):
                await self._write(request, ctx, key, name, parsed.document, record)
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
        if self._audit is not None and record.get("phase") != "unknown":  # else: settled
            record.update(outcome="OK", reason="")
            await self._audit_write(record, durable=False)
        return reply

    async def _write(
        self,
        request: pb.PutKeyPolicyRequest,
        ctx: RequestContext,
        key: ResolvedKey,
        name: str,
        document: dict[str, Any],
        record: dict[str, Any],
    ) -> None:
        """Read-compare-write under the key's lock: the intent is on disk before KMS is called."""
        if self._audit is not None or request.etag:
            previous = await self._read_policy(key, name, ctx)  # fresh: never from the cache
            previous_etag = policy_etag(previous)
            record["previous_etag"] = previous_etag
            if request.etag and previous_etag != request.etag:
                raise Aborted(
                    "the key policy changed since it was read (etag mismatch); "
                    "read it again and reapply your change",
                    reason="ETAG_MISMATCH",
                    metadata={
                        "keyArn": key.arn,
                        "currentEtag": previous_etag,
                        "expectedEtag": request.etag,
                    },
                    precondition_violations=[
                        PreconditionViolation("ETAG", key.arn, "the policy's etag differs")
                    ],
                )
            if self._audit is not None:
                record["changes"] = change_summary(_json_or_none(previous), document)
                record["previous_policy"] = previous
                await self._audit_write({**record, "phase": "intent"}, durable=True)
        record["phase"] = "outcome"
        try:
            await self._gateway.call(
                "PutKeyPolicy",
                lambda: self._backend.put_key_policy(
                    key.arn,
                    name,
                    request.policy,
                    bypass_lockout_check=request.bypass_policy_lockout_safety_check,
                    region=key.region,
                ),
                ctx=ctx,
                key=key.arn,
            )
        except (ServiceError, asyncio.CancelledError) as exc:
            if not ctx.kms_uncertain:
                raise  # KMS answered (or was never asked): the policy did not change
            self._reads.invalidate(key.arn, name)
            if await self._settled_applied(exc, ctx, key, name, record):
                return
            if isinstance(exc, ServiceError):
                exc.metadata["policyChange"] = "UNKNOWN"
                exc.message += (
                    "; the request reached KMS, so the change may have taken effect: "
                    "read the policy to find out"
                )
            raise
        self._reads.invalidate(key.arn, name)

    async def _settled_applied(
        self,
        exc: BaseException,
        ctx: RequestContext,
        key: ResolvedKey,
        name: str,
        record: dict[str, Any],
    ) -> bool:
        """After a Put whose effect is unknown: record UNKNOWN, then read the policy back.

        Returns True if, within the caller's deadline, the read shows the new policy in
        place (the call then succeeds). Otherwise the read-back runs on after the answer,
        within SETTLE_SECONDS, and its result is a `settled` record.
        """
        what = exc.code.name if isinstance(exc, ServiceError) else "CANCELLED"
        record["phase"] = "unknown"  # the outcome record is written here, not by _put
        if self._audit is not None:
            record.update(
                outcome="UNKNOWN",
                reason=f"{what} after the request was sent to KMS",
                message="the policy may or may not have changed; see the settled record",
            )
            await self._audit_write(record, durable=False)
        if not isinstance(exc, asyncio.CancelledError) and ctx.remaining() > SETTLE_MIN_SECONDS:
            applied = await self._read_back(ctx, key, name, record)
            if applied is not None:
                return applied
        task = asyncio.create_task(self._settle_later(key, name, record))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return False

    async def _settle_later(self, key: ResolvedKey, name: str, record: dict[str, Any]) -> None:
        ctx = RequestContext(
            request_id=record["request_id"],
            method="SettlePutKeyPolicy",
            caller=record["caller"],
            peer="",
            rate_key="kms-policy-service:settle",
            deadline=time.monotonic() + SETTLE_SECONDS,
        )
        if await self._read_back(ctx, key, name, record) is None and self._audit is not None:
            await self._audit_write(
                _settled(record, "UNSETTLED", "the policy could not be read back"),
                durable=False,
            )

    async def _read_back(
        self, ctx: RequestContext, key: ResolvedKey, name: str, record: dict[str, Any]
    ) -> bool | None:
        """Read the policy once; record whether the write took effect. None: no answer."""
        try:
            current = policy_etag(await self._read_policy(key, name, ctx))
        except ServiceError:
            return None
        if current == record.get("new_etag"):
            outcome, applied = "APPLIED", True
        elif current == record.get("previous_etag"):
            outcome, applied = "NOT_APPLIED", False
        elif "previous_etag" not in record:
            outcome, applied = "NOT_APPLIED_OR_CHANGED_ELSEWHERE", False
        else:
            outcome, applied = "CHANGED_ELSEWHERE", False
        if self._audit is not None:
            await self._audit_write(
                _settled(record, outcome, f"read back: etag {current}"), durable=False
            )
        return applied

    async def drain(self) -> None:
        """After the listener stopped: let cancelled handlers record their outcomes, then
        the read-backs of unknown outcomes finish (bounded by SETTLE_SECONDS)."""
        for tasks in (self._handling, self._settling):
            if tasks:
                await asyncio.wait(set(tasks), timeout=SETTLE_SECONDS)

    async def _audit_write(self, record: dict[str, Any], *, durable: bool) -> None:
        assert self._audit is not None
        await self._audit.record(record, durable=durable)

    async def _list(
        self, request: pb.ListKeyPoliciesRequest, ctx: RequestContext
    ) -> pb.ListKeyPoliciesResponse:
        ref = parse_key_id(request.key_id)
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise _bad_field(
                "page_size",
                f"page_size must be 0 (the KMS default) to {MAX_PAGE_SIZE}",
                "INVALID_PAGE_SIZE",
            )
        key = await self._authorize(ctx, "ListKeyPolicies", ref) or await self._resolve(ref, ctx)
        marker = _decode_page_token(request.page_token, key.arn) if request.page_token else None
        page = await self._gateway.call(
            "ListKeyPolicies",
            lambda: self._backend.list_key_policies(
                key.arn, limit=request.page_size or None, marker=marker, region=key.region
            ),
            ctx=ctx,
        )
        token = _encode_page_token(key.arn, page.next_marker) if page.next_marker else ""
        return pb.ListKeyPoliciesResponse(policy_names=list(page.names), next_page_token=token)

    async def _validate(
        self, request: pb.ValidateKeyPolicyRequest, ctx: RequestContext
    ) -> pb.ValidateKeyPolicyResponse:
        name = policy_name_for_write(request.policy_name)
        ref = parse_key_id(request.key_id) if request.key_id else None
        authorized_key = await self._authorize(ctx, "ValidateKeyPolicy", ref)
        parsed = parse_policy(request.policy)
        if ref is None:
            findings = self._policy_findings(parsed, name, key_arn=None, bypass=True)
        else:
            key = authorized_key or await self._resolve(ref, ctx)
            findings = self._policy_findings(parsed, name, key_arn=key.arn, bypass=False)
            if key.metadata.aws_managed:
                findings.append(
                    Finding.error(
                        "AWS_MANAGED_KEY",
                        "",
                        f"{key.arn} is AWS-managed: its policy cannot be changed",
                    )
                )
        return pb.ValidateKeyPolicyResponse(findings=self._capped(findings))

    def _capped(self, findings: list[Finding]) -> list[pb.Finding]:
        """At most max_findings (errors first), then one saying how many were left out.

        An answer must fit in what gRPC may send, whatever the policy (AIP-193 details).
        """
        if len(findings) > self._max_findings:
            metrics.child(metrics.findings_truncated_total, "validate").inc()
            ordered = sorted(findings, key=lambda f: f.severity.value)  # stable: errors first
            kept = ordered[: self._max_findings - 1]
            left_out = ordered[len(kept) :]
            errors = sum(f.severity is Severity.ERROR for f in left_out)
            kept.append(
                Finding(
                    Severity.ERROR if errors else Severity.WARNING,
                    TOO_MANY_FINDINGS,
                    "",
                    f"{len(left_out)} more findings not listed ({errors} errors, "
                    f"{len(left_out) - errors} warnings); fix these and validate again",
                )
            )
            findings = kept
        return [
            pb.Finding(
                severity=_SEVERITY[f.severity],
                code=f.code,
                path=clip(f.path),
                message=clip(f.message),
            )
            for f in findings
        ]

    # -- shared steps -------------------------------------------------------

    async def _authorize(
        self, ctx: RequestContext, action: str, ref: KeyRef | None
    ) -> ResolvedKey | None:
        """Allow or refuse before the key's existence is revealed (AIP-193).

        Returns the resolved key when resolving it was needed to decide (rules that
        name key ARNs while the caller named an alias or a bare ID), else None.
        """
        if not ctx.caller:
            if self._authz.required:
                raise Unauthenticated(
                    "the caller could not be identified (no client certificate, no trusted "
                    "proxy header)",
                    reason="UNAUTHENTICATED",
                )
            return None
        policy = self._authz.policy
        if not policy.may_act(ctx.caller, action):
            raise _denied(ctx.caller, action, ref)
        if ref is None or policy.allows(ctx.caller, action, ref.names):
            return None
        try:
            key = await self._resolve(ref, ctx)
        except ServiceError as exc:
            # Whatever went wrong (missing key, KMS AccessDenied or throttling, another
            # account or Region), a caller not shown to be authorized learns nothing of it.
            ctx.key_arn = ""
            raise _denied(ctx.caller, action, ref) from exc
        if not policy.allows(ctx.caller, action, (key.arn,)):
            ctx.key_arn = ""
            raise _denied(ctx.caller, action, ref)
        return key

    async def _resolve(self, ref: KeyRef, ctx: RequestContext) -> ResolvedKey:
        key = await self._resolver.resolve(ref, ctx)
        ctx.key_arn = key.arn
        return key

    async def _read_policy(self, key: ResolvedKey, name: str, ctx: RequestContext) -> str:
        return await self._gateway.call(
            "GetKeyPolicy",
            lambda: self._backend.get_key_policy(key.arn, name, region=key.region),
            ctx=ctx,
        )

    def _policy_findings(
        self, parsed: ParsedPolicy, name: str, *, key_arn: str | None, bypass: bool
    ) -> list[Finding]:
        """The document's findings and, once it parsed, those against the key (or any key).

        One function for Put and Validate: what Validate reports as errors is exactly
        what Put refuses.
        """
        findings = list(parsed.findings)
        if parsed.document is not None:
            if key_arn is not None:
                findings.extend(self._key_findings(parsed.document, key_arn, name, bypass))
            elif name == DEFAULT_POLICY_NAME and not bypass:
                findings.extend(lockout_findings(parsed.document, self._principal, None))
        return findings

    def _key_findings(
        self, document: dict[str, Any], key_arn: str, name: str, bypass: bool
    ) -> list[Finding]:
        findings = list(key_resource_findings(document, key_arn))
        if name == DEFAULT_POLICY_NAME and not bypass:
            findings.extend(lockout_findings(document, self._principal, key_arn))
        return findings

    async def _run(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[RequestContext], Awaitable[Reply]],
    ) -> Reply:
        started = time.monotonic()
        ctx = self._context(method, context, started)
        code = grpc.StatusCode.OK
        reason = ""
        labels = ("unary", SERVICE_NAME, method)
        metrics.child(metrics.grpc_server_started_total, *labels).inc()
        self.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)
        try:
            await context.send_initial_metadata((("x-request-id", ctx.request_id),))
            return await handler(ctx)
        except ServiceError as err:
            code, reason = err.code, err.reason
            await _abort(context, err, ctx)
        except asyncio.CancelledError:
            code, reason = grpc.StatusCode.CANCELLED, "CANCELLED"
            raise
        except Exception:
            log.exception("unexpected failure in %s (request id %s)", method, ctx.request_id)
            internal = internal_error(ctx.request_id)
            code, reason = internal.code, internal.reason
            await _abort(context, internal, ctx)
        finally:
            elapsed = time.monotonic() - started
            self.in_flight -= 1
            self._handling.discard(task)
            metrics.child(metrics.grpc_server_handled_total, *labels, code.name).inc()
            metrics.child(metrics.grpc_server_handling_seconds, *labels).observe(elapsed)
            if logs.access_enabled():
                logs.access(
                    {
                        "method": method,
                        "code": code.name,
                        "reason": reason,
                        "duration_ms": round(elapsed * 1000, 3),
                        "caller": ctx.caller,
                        "peer": ctx.peer,
                        "key_arn": ctx.key_arn,
                        "request_id": ctx.request_id,
                        "kms_attempts": ctx.kms_attempts,
                    }
                )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _context(
        self, method: str, context: grpc.aio.ServicerContext, started: float
    ) -> RequestContext:
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str):
                request_id = value[:128]
                break
        remaining = context.time_remaining()
        # Bounded either way: no caller holds a lock or a slot for longer than max_deadline.
        remaining = min(
            self._default_deadline if remaining is None else remaining, self._max_deadline
        )
        caller = self._identifier.identify(context)
        return RequestContext(
            request_id=request_id or os.urandom(16).hex(),
            method=method,
            caller=caller.identity or "",
            peer=caller.peer,
            rate_key=caller.rate_key,
            deadline=started + remaining,
        )


def _settled(record: dict[str, Any], outcome: str, message: str) -> dict[str, Any]:
    return {
        "request_id": record["request_id"],
        "caller": record["caller"],
        "action": "PutKeyPolicy",
        "phase": "settled",
        "key_arn": record.get("key_arn", ""),
        "policy_name": record["policy_name"],
        "new_etag": record.get("new_etag", ""),
        "previous_etag": record.get("previous_etag", ""),
        "outcome": outcome,
        "message": message,
    }


def _raise_policy_errors(findings: list[Finding], parsed: ParsedPolicy | None) -> None:
    """INVALID_POLICY if the document itself is wrong, else POLICY_LOCKOUT if that is all."""
    errors = errors_only(findings)
    document_errors = parsed is not None and bool(errors_only(parsed.findings))
    lockout = any(f.code == "POLICY_LOCKOUT" for f in errors)
    reason = "POLICY_LOCKOUT" if lockout and not document_errors else "INVALID_POLICY"
    raise_for_errors(errors, field="policy", reason=reason)


def _denied(caller: str, action: str, ref: KeyRef | None) -> PermissionDenied:
    target = f" on {ref.raw}" if ref is not None else ""
    return PermissionDenied(
        f"caller {caller!r} is not authorized to call {action}{target}",
        reason="CALLER_NOT_AUTHORIZED",
        metadata={"caller": caller, "action": action},
    )


def _json_or_none(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _abort(context: grpc.aio.ServicerContext, err: ServiceError, ctx: RequestContext) -> None:
    if isinstance(err, Internal) and err.message != internal_error(ctx.request_id).message:
        # Full detail only in the server log; the caller gets the request id to report.
        log.error(
            "internal error in %s (request id %s): %s", ctx.method, ctx.request_id, err.message
        )
        err.message = internal_error(ctx.request_id).message
    if (
        ctx.key_arn
        and "keyArn" not in err.metadata
        and err.code != grpc.StatusCode.PERMISSION_DENIED
    ):
        err.metadata["keyArn"] = ctx.key_arn
    status = to_status(err, request_id=ctx.request_id)
    if err.violations_left_out:
        metrics.child(metrics.findings_truncated_total, "status").inc()
    await context.abort_with_status(rpc_status.to_status(status))


def _bad_field(field: str, message: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        message, reason=reason, field_violations=[FieldViolation(field, message, reason=reason)]
    )


def _encode_page_token(key_arn: str, marker: str) -> str:
    raw = json.dumps({"k": key_arn, "m": marker}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, key_arn: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        marker, owner = data["m"], data["k"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _bad_field(
            "page_token", "page_token is not one this service issued", "INVALID_PAGE_TOKEN"
        ) from exc
    if owner != key_arn or not isinstance(marker, str):
        raise _bad_field("page_token", "page_token belongs to another key", "INVALID_PAGE_TOKEN")
    return marker
