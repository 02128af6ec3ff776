"""All the checks of a policy document for one key, in one function for Put and Validate.

So "ValidateKeyPolicy's errors are exactly what PutKeyPolicy refuses" holds by
construction: both call `policy_findings`, Put raising the errors it returns.
"""

from __future__ import annotations

from kms_policy_service.validation.document import ParsedPolicy, key_resource_findings
from kms_policy_service.validation.findings import Finding
from kms_policy_service.validation.lockout import ServicePrincipal, lockout_findings
from kms_policy_service.validation.names import DEFAULT_POLICY_NAME


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
