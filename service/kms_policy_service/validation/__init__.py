"""Pure request validation: request fields in, clean values or findings out."""

from kms_policy_service.validation.document import ParsedPolicy, parse_policy
from kms_policy_service.validation.findings import Finding, Severity
from kms_policy_service.validation.keys import KeyKind, KeyRef, check_key_scope, parse_key_id
from kms_policy_service.validation.lockout import ServicePrincipal, lockout_findings
from kms_policy_service.validation.names import policy_name_for_read, policy_name_for_write

__all__ = [
    "Finding",
    "KeyKind",
    "KeyRef",
    "ParsedPolicy",
    "ServicePrincipal",
    "Severity",
    "check_key_scope",
    "lockout_findings",
    "parse_key_id",
    "parse_policy",
    "policy_name_for_read",
    "policy_name_for_write",
]
