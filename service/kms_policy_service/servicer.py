"""PolicyService RPCs: one method each, over named steps.

    command (every field validated) -> authorize -> resolve the key -> check the
    policy against the key -> call KMS (through the gateway) -> reply

The RPC frame (context, metrics, access record, status) is rpc.RpcFrame; writing a
policy (lock, etag, audit intent, unknown outcomes) is writes.PolicyWriter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import grpc

from kms_policy_service import metrics
from kms_policy_service.audit import AuditLog, PutAudit, audit_unavailable
from kms_policy_service.authz import Authorizer
from kms_policy_service.errors import (
    TOO_MANY_FINDINGS,
    FailedPrecondition,
    FieldViolation,
    PermissionDenied,
    PreconditionViolation,
    ServiceError,
    Unauthenticated,
    clip,
)
from kms_policy_service.etag import etag_of_document, policy_etag
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.guardrail_file import GuardrailsFile
from kms_policy_service.reads import PolicyReads
from kms_policy_service.request import RequestContext
from kms_policy_service.resolver import KeyResolver, ResolvedKey
from kms_policy_service.rpc import RpcFrame
from kms_policy_service.validation import (
    Finding,
    KeyRef,
    ParsedPolicy,
    Severity,
    parse_key_id,
    policy_name_for_read,
)
from kms_policy_service.validation.commands import PutCommand, put_command, validate_command
from kms_policy_service.validation.findings import errors_only, raise_for_errors
from kms_policy_service.validation.guardrails import Violation
from kms_policy_service.validation.lockout import ServicePrincipals
from kms_policy_service.validation.names import DEFAULT_POLICY_NAME
from kms_policy_service.validation.page_tokens import (
    check_page_size,
    decode_page_token,
    encode_page_token,
)
from kms_policy_service.validation.policy_checks import (
    current_document,
    policy_findings,
    scope_findings,
)
from kms_policy_service.validation.scopes import Scope
from kms_policy_service.writes import SETTLE_SECONDS, PolicyWriter, etag_mismatch
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

DEFAULT_MAX_FINDINGS = 100
_SEVERITY = {
    Severity.ERROR: pb.Finding.SEVERITY_ERROR,
    Severity.WARNING: pb.Finding.SEVERITY_WARNING,
}


class PolicyServicer(pb_grpc.PolicyServiceServicer):
    def __init__(
        self,
        *,
        frame: RpcFrame,
        gateway: KmsGateway,
        resolver: KeyResolver,
        principals: ServicePrincipals,
        reads: PolicyReads,
        writer: PolicyWriter,
        authorizer: Authorizer,
        audit: AuditLog | None,
        guardrails: GuardrailsFile | None = None,
        max_findings: int = DEFAULT_MAX_FINDINGS,
    ) -> None:
        self._frame = frame
        self._gateway = gateway
        self._resolver = resolver
        self._principals = principals  # the lockout check's, by the key's account
        self._reads = reads
        self._writer = writer
        self._authz = authorizer
        self._audit = audit
        self._guardrails = guardrails or GuardrailsFile(None)
        self._max_findings = max_findings

    @property
    def in_flight(self) -> int:
        return self._frame.in_flight

    async def drain(self) -> None:
        """After the listener stopped: cancelled handlers record their outcomes, then the
        read-backs of unknown outcomes finish (bounded by SETTLE_SECONDS each)."""
        await self._frame.drain(SETTLE_SECONDS)
        await self._writer.drain()

    # -- RPCs ---------------------------------------------------------------

    async def GetKeyPolicy(
        self, request: pb.GetKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetKeyPolicyResponse:
        async def get(ctx: RequestContext) -> pb.GetKeyPolicyResponse:
            ref = parse_key_id(request.key_id)
            name = policy_name_for_read(request.policy_name)
            key = await self._authorize(ctx, ref) or await self._resolve(ref, ctx)
            # Concurrent identical reads share one KMS call (and the optional cache).
            policy = await self._reads.read(
                key.arn,
                name,
                lambda: self._gateway.get_key_policy(key.arn, name, region=key.region, ctx=ctx),
                caller=ctx.caller if self._gateway.sessions_per_caller(key.arn) else "",
                deadline=ctx.deadline,
            )
            return pb.GetKeyPolicyResponse(
                key_arn=key.arn, policy_name=name, policy=policy, etag=policy_etag(policy)
            )

        return await self._frame.run("GetKeyPolicy", context, get)

    async def PutKeyPolicy(
        self, request: pb.PutKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutKeyPolicyResponse:
        async def put(ctx: RequestContext) -> pb.PutKeyPolicyResponse:
            audit = PutAudit(
                None if request.validate_only else self._audit,
                request_id=ctx.request_id,
                caller=ctx.caller,
                peer=ctx.peer,
                key_id=request.key_id[:2048],
                policy_name=request.policy_name or DEFAULT_POLICY_NAME,
                bypass_lockout_check=request.bypass_policy_lockout_safety_check,
                expected_etag=request.etag,
                new_policy=request.policy,  # refused attempts are evidence too
            )
            try:
                if audit.enabled:
                    self._require_audit()
                command = put_command(
                    key_id=request.key_id,
                    policy_name=request.policy_name,
                    policy=request.policy,
                    etag=request.etag,
                    bypass_lockout_check=request.bypass_policy_lockout_safety_check,
                    validate_only=request.validate_only,
                )
                return await self._put(command, ctx, audit)
            except ServiceError as err:
                await audit.failed(err)
                raise
            except BaseException:  # cancelled (caller gone, drain grace over)
                await audit.cancelled()
                raise

        return await self._frame.run("PutKeyPolicy", context, put)

    async def ListKeyPolicies(
        self, request: pb.ListKeyPoliciesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListKeyPoliciesResponse:
        async def list_(ctx: RequestContext) -> pb.ListKeyPoliciesResponse:
            ref = parse_key_id(request.key_id)
            limit = check_page_size(request.page_size)
            key = await self._authorize(ctx, ref) or await self._resolve(ref, ctx)
            marker = decode_page_token(request.page_token, key.arn) if request.page_token else None
            page = await self._gateway.list_key_policies(
                key.arn, limit=limit, marker=marker, region=key.region, ctx=ctx
            )
            token = encode_page_token(key.arn, page.next_marker) if page.next_marker else ""
            return pb.ListKeyPoliciesResponse(policy_names=list(page.names), next_page_token=token)

        return await self._frame.run("ListKeyPolicies", context, list_)

    async def ValidateKeyPolicy(
        self, request: pb.ValidateKeyPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateKeyPolicyResponse:
        async def validate(ctx: RequestContext) -> pb.ValidateKeyPolicyResponse:
            command = validate_command(
                key_id=request.key_id, policy_name=request.policy_name, policy=request.policy
            )
            key = await self._authorize(ctx, command.key)
            if command.key is not None:
                key = key or await self._resolve(command.key, ctx)
            findings = policy_findings(
                command.policy,
                policy_name=command.policy_name,
                principal=self._principals.for_key(key.arn if key else None),
                key_arn=key.arn if key else None,
                aws_managed=key is not None and key.metadata.aws_managed,
                bypass_lockout_check=key is None,  # without a key: the document alone
            )
            document = command.policy.document
            if document is not None:
                # What a Put would also refuse: the caller's scope (judged by its
                # PutKeyPolicy rules for this key) and the guardrails.
                guardrails = self._guardrails.current
                scopes = (
                    self._scopes(ctx, command.key, key)
                    if key is not None and command.key is not None
                    else None
                )
                current = None
                # Judging against the current policy shows what it holds: only to a caller
                # who may read or write this key (not to one that may only validate).
                if (
                    key is not None
                    and command.key is not None
                    and (scopes is not None or guardrails.needs_current_policy)
                    and self._may_see_policy(ctx, command.key, key)
                ):
                    current = current_document(
                        await self._gateway.get_key_policy(
                            key.arn, command.policy_name, region=key.region, ctx=ctx
                        )
                    )
                if scopes is not None:
                    findings.extend(scope_findings(scopes, document, current))
                findings.extend(v.finding() for v in guardrails.violations(document, current))
            return pb.ValidateKeyPolicyResponse(findings=self._capped(findings))

        return await self._frame.run("ValidateKeyPolicy", context, validate)

    # -- PutKeyPolicy's steps -------------------------------------------------

    async def _put(
        self, command: PutCommand, ctx: RequestContext, audit: PutAudit
    ) -> pb.PutKeyPolicyResponse:
        key = await self._authorize(ctx, command.key)
        audit.authorized = True  # from here on, a refusal keeps the caller's whole policy
        audit.note(authorized=True)
        # 1. The document's own rules, with every other error computable without KMS.
        self._refuse_document_errors(command)
        guardrails = self._guardrails.current
        judged_early = not self._may_be_scoped(ctx) and not guardrails.needs_current_policy
        if judged_early:  # 2-4 need neither the key nor its policy: before any KMS call
            self._judge(ctx.caller, command, command.known_key_arn, None, None)
        key = key or await self._resolve(command.key, ctx)
        audit.note(key_arn=key.arn)
        _refuse_aws_managed(key)
        scopes = self._scopes(ctx, command.key, key)
        check: Callable[[str | None], None] | None = None
        if judged_early:
            if command.known_key_arn != key.arn:  # the lockout and resource checks again
                self._refuse_policy_errors(command, key_arn=key.arn, document_findings=False)
        else:
            check = functools.partial(self._judge, ctx.caller, command, key.arn, scopes)
        assert command.policy.document is not None  # no errors: it parsed
        new_etag = etag_of_document(command.policy.document)
        audit.note(new_etag=new_etag)
        if command.validate_only:  # every check a write would make, the etag's too
            if check is not None or command.expected_etag:
                current = await self._gateway.get_key_policy(
                    key.arn, command.policy_name, region=key.region, ctx=ctx
                )
                if command.expected_etag and policy_etag(current) != command.expected_etag:
                    raise etag_mismatch(key.arn, policy_etag(current), command.expected_etag)
                if check is not None:
                    check(current)
        else:  # the check, if any, runs on the policy read under the key's lock
            await self._writer.write(command, key, ctx, audit, check=check)
        return pb.PutKeyPolicyResponse(
            key_arn=key.arn, policy_name=command.policy_name, etag=new_etag
        )

    def _require_audit(self) -> None:
        if self._audit is not None and not self._audit.healthy:
            raise audit_unavailable(self._audit.error or "not writable")

    def _refuse_document_errors(self, command: PutCommand) -> None:
        """INVALID_POLICY when the document breaks its own rules, listing every error
        that needs no KMS call (lockout and resource checks included)."""
        if errors_only(command.policy.findings):
            self._refuse_policy_errors(command, key_arn=command.known_key_arn)

    def _judge(
        self,
        caller: str,
        command: PutCommand,
        key_arn: str | None,
        scopes: list[Scope] | None,
        current_text: str | None,
    ) -> None:
        """The checks after the document's own, in order: the caller's scope
        (PERMISSION_DENIED), the guardrails (FAILED_PRECONDITION), then the lockout and
        resource checks against the key (INVALID_ARGUMENT)."""
        document = command.policy.document
        assert document is not None
        current = current_document(current_text)
        if scopes is not None:
            out_of_scope = scope_findings(scopes, document, current)
            if out_of_scope:
                metrics.child(metrics.policy_refusals_total, "scope").inc()
                raise _out_of_scope(caller, out_of_scope)
        violations = self._guardrails.current.violations(
            document, current, bypass_lockout_check=command.bypass_lockout_check
        )
        if violations:
            for name in sorted({v.guardrail for v in violations}):
                metrics.child(metrics.policy_refusals_total, f"guardrail/{name}").inc()
            raise _guardrail_violation(violations)
        self._refuse_policy_errors(command, key_arn=key_arn, document_findings=False)

    def _may_see_policy(self, ctx: RequestContext, ref: KeyRef, key: ResolvedKey) -> bool:
        if not ctx.caller:
            return not self._authz.required
        names = (*self._resolver.names_of(ref), key.arn)
        policy = self._authz.policy
        return any(policy.allows(ctx.caller, a, names) for a in ("GetKeyPolicy", "PutKeyPolicy"))

    def _may_be_scoped(self, ctx: RequestContext) -> bool:
        """Some rule that could authorize this caller's Put has a scope."""
        if not ctx.caller:
            return False
        return any(
            r.scope is not None and r.covers(ctx.caller, ctx.method)
            for r in self._authz.policy.rules
        )

    def _scopes(self, ctx: RequestContext, ref: KeyRef, key: ResolvedKey) -> list[Scope] | None:
        """The scopes of the caller's PutKeyPolicy rules for this key; None: unscoped (some
        rule has no scope, or there is no authorization file)."""
        if not ctx.caller:
            return None
        names = (*self._resolver.names_of(ref), key.arn)
        rules = self._authz.policy.rules_for(ctx.caller, "PutKeyPolicy", names)
        scopes = [r.scope for r in rules if r.scope is not None]
        if not rules or len(scopes) < len(rules):
            return None
        return scopes

    def _refuse_policy_errors(
        self, command: PutCommand, *, key_arn: str | None, document_findings: bool = True
    ) -> None:
        findings = policy_findings(
            command.policy,
            policy_name=command.policy_name,
            principal=self._principals.for_key(key_arn or command.key.raw),
            key_arn=key_arn,
            bypass_lockout_check=command.bypass_lockout_check,
            document_findings=document_findings,
        )
        _raise_policy_errors(findings, command.policy if document_findings else None)

    # -- shared steps -------------------------------------------------------

    async def _authorize(self, ctx: RequestContext, ref: KeyRef | None) -> ResolvedKey | None:
        """May the caller do ctx.method on this key? Decided before the key's existence is
        revealed (AIP-193).

        Returns the resolved key when resolving it was needed to decide (rules that
        name key ARNs while the caller named an alias or a bare ID), else None.
        """
        action = ctx.method
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
        if ref is None or policy.allows(ctx.caller, action, self._resolver.names_of(ref)):
            return None
        try:
            key = await self._resolver.resolve(ref, ctx)
        except ServiceError as exc:
            # Whatever went wrong (missing key, KMS AccessDenied or throttling, another
            # account or Region), a caller not shown to be authorized learns nothing of it.
            raise _denied(ctx.caller, action, ref) from exc
        if not policy.allows(ctx.caller, action, (key.arn,)):
            raise _denied(ctx.caller, action, ref)
        ctx.key_arn = key.arn
        return key

    async def _resolve(self, ref: KeyRef, ctx: RequestContext) -> ResolvedKey:
        key = await self._resolver.resolve(ref, ctx)
        ctx.key_arn = key.arn  # for the access record and error details
        return key

    def _capped(self, findings: list[Finding]) -> list[pb.Finding]:
        """At most max_findings (errors first), then one saying how many were left out.

        An answer must fit in what gRPC may send, whatever the policy.
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


def _raise_policy_errors(findings: Iterable[Finding], parsed: ParsedPolicy | None) -> None:
    """INVALID_POLICY if the document itself is wrong, else POLICY_LOCKOUT if that is all."""
    errors = errors_only(findings)
    document_errors = parsed is not None and bool(errors_only(parsed.findings))
    lockout = any(f.code == "POLICY_LOCKOUT" for f in errors)
    reason = "POLICY_LOCKOUT" if lockout and not document_errors else "INVALID_POLICY"
    if errors:
        check = "lockout" if reason == "POLICY_LOCKOUT" else "document"
        metrics.child(metrics.policy_refusals_total, check).inc()
    raise_for_errors(errors, field="policy", reason=reason)


def _out_of_scope(caller: str, findings: list[Finding]) -> PermissionDenied:
    first = findings[0]
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    return PermissionDenied(
        f"the change is outside the caller's scope: {first.path}: {first.message}{more}",
        reason="OUT_OF_SCOPE",
        metadata={"caller": caller},
        field_violations=[
            FieldViolation("policy", f.message, reason=f.code, path=f.path) for f in findings
        ],
    )


def _guardrail_violation(violations: list[Violation]) -> FailedPrecondition:
    names = sorted({v.guardrail for v in violations})
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return FailedPrecondition(
        f"the policy violates the guardrail {first.guardrail} at {first.path}: "
        f"{first.description}{more}",
        reason="GUARDRAIL_VIOLATION",
        metadata={"guardrails": ",".join(names)},
        precondition_violations=[
            PreconditionViolation(f"guardrail/{v.guardrail}", v.path, v.description)
            for v in violations
        ],
    )


def _refuse_aws_managed(key: ResolvedKey) -> None:
    if key.metadata.aws_managed:
        raise FailedPrecondition(
            f"{key.arn} is an AWS-managed key: its policy can be read but never changed",
            reason="AWS_MANAGED_KEY",
            metadata={"keyArn": key.arn},
            precondition_violations=[
                PreconditionViolation("KEY_MANAGER", key.arn, "the key is managed by AWS")
            ],
        )


def _denied(caller: str, action: str, ref: KeyRef | None) -> PermissionDenied:
    target = f" on {ref.raw}" if ref is not None else ""
    return PermissionDenied(
        f"caller {caller!r} is not authorized to call {action}{target}",
        reason="CALLER_NOT_AUTHORIZED",
        metadata={"caller": caller, "action": action},
    )
