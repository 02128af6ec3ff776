"""All the checks of a policy document for one key, in one function for Put and Validate.

So "ValidateKeyPolicy's errors are exactly what PutKeyPolicy refuses" holds by
construction: both call `policy_findings`, Put raising the errors it returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kms_policy_service.validation.document import ParsedPolicy, key_resource_findings
from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.lockout import ServicePrincipal, lockout_findings
from kms_policy_service.validation.names import DEFAULT_POLICY_NAME
from kms_policy_service.validation.scopes import Scope


def policy_findings(
    policy: ParsedPolicy,
    *,
    policy_name: str,
    principal: ServicePrincipal,
    key_arn: str | None,
    aws_managed: bool = False,
    bypass_lockout_check: bool = False,
    document_findings: bool = True,
) -> list[Finding]:
    """The document's own findings (unless `document_findings` is False) and, once it
    parsed, those against the key: its resource, the lockout check (for `default`,
    unless bypassed) and whether AWS manages the key. With no `key_arn` (not known
    yet) the lockout check refuses only a policy that locks the service out of any key.
    """
    findings = list(policy.findings) if document_findings else []
    document = policy.document
    if document is not None:
        if key_arn is not None:
            findings.extend(key_resource_findings(document, key_arn))
        if policy_name == DEFAULT_POLICY_NAME and not bypass_lockout_check:
            findings.extend(lockout_findings(document, principal, key_arn))
    if aws_managed:
        findings.append(
            Finding.error(
                "AWS_MANAGED_KEY", "", f"{key_arn} is AWS-managed: its policy cannot be changed"
            )
        )
    return findings


def current_document(text: str | None) -> dict[str, Any] | None:
    """The key's current policy as a document (None when unknown or not an object)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def scope_findings(
    scopes: Sequence[Scope], document: dict[str, Any], current: dict[str, Any] | None
) -> list[Finding]:
    """[] if one of the scopes allows the whole change; else the smallest set of reasons.

    One rule allowing all of it is enough (a rule without scope was already taken to
    allow anything, so `scopes` is only ever the scoped rules').
    """
    best: list[Finding] | None = None
    for scope in scopes:
        found = scope.findings(document, current or {})
        if not found:
            return []
        if best is None or len(found) < len(best):
            best = found
    return best or []
