"""What the async and sync clients share: requests, results, and the multi-step plans.

A plan is a generator that yields the calls it needs and receives their results
(or has their errors thrown into it), so `update_policy` and `list_policies`
are written once and driven by either client.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from kms_policy_client._errors import EtagMismatchError
from kms_policy_client._results import Finding, Policy, PutResult, Severity, ValidationResult
from kmspolicy.v1 import policy_service_pb2 as pb

PolicyText = str | dict[str, Any]
DEFAULT_UPDATE_ATTEMPTS = 5


def policy_text(policy: PolicyText) -> str:
    """A dict is serialized canonically (sorted keys, no insignificant whitespace)."""
    if isinstance(policy, dict):
        return json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return policy


@dataclass(frozen=True)
class Call:
    """One RPC a plan needs: the method name and its request."""

    method: str
    request: Any


def get_request(key_id: str, policy_name: str) -> pb.GetKeyPolicyRequest:
    return pb.GetKeyPolicyRequest(key_id=key_id, policy_name=policy_name)


def put_request(
    key_id: str,
    policy: PolicyText,
    *,
    policy_name: str,
    etag: str | None,
    bypass_lockout_check: bool,
    validate_only: bool,
) -> pb.PutKeyPolicyRequest:
    return pb.PutKeyPolicyRequest(
        key_id=key_id,
        policy_name=policy_name,
        policy=policy_text(policy),
        etag=etag or "",
        bypass_policy_lockout_safety_check=bypass_lockout_check,
        validate_only=validate_only,
    )


def validate_request(
    policy: PolicyText, key_id: str | None, policy_name: str
) -> pb.ValidateKeyPolicyRequest:
    return pb.ValidateKeyPolicyRequest(
        key_id=key_id or "", policy=policy_text(policy), policy_name=policy_name
    )


def to_policy(reply: pb.GetKeyPolicyResponse) -> Policy:
    return Policy(reply.key_arn, reply.policy_name, reply.policy, reply.etag)


def to_put_result(reply: pb.PutKeyPolicyResponse) -> PutResult:
    return PutResult(reply.key_arn, reply.policy_name, reply.etag)


_SEVERITY = {
    pb.Finding.SEVERITY_ERROR: Severity.ERROR,
    pb.Finding.SEVERITY_WARNING: Severity.WARNING,
}


def to_validation(reply: pb.ValidateKeyPolicyResponse) -> ValidationResult:
    return ValidationResult(
        tuple(
            Finding(_SEVERITY.get(f.severity, Severity.ERROR), f.code, f.path, f.message)
            for f in reply.findings
        )
    )


Plan = Generator[Call, Any, Any]


def list_plan(key_id: str, page_size: int) -> Plan:
    """Every policy name, following next_page_token to the end."""
    names: list[str] = []
    token = ""
    while True:
        reply = yield Call(
            "ListKeyPolicies",
            pb.ListKeyPoliciesRequest(key_id=key_id, page_size=page_size, page_token=token),
        )
        names.extend(reply.policy_names)
        token = reply.next_page_token
        if not token:
            return names


def update_plan(
    key_id: str,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    policy_name: str,
    attempts: int,
) -> Plan:
    """Read with the etag, apply fn, write with the etag; on ETAG_MISMATCH read again."""
    for attempt in range(1, attempts + 1):
        current = to_policy((yield Call("GetKeyPolicy", get_request(key_id, policy_name))))
        new = fn(copy.deepcopy(current.document))
        request = put_request(
            key_id,
            new,
            policy_name=policy_name,
            etag=current.etag,
            bypass_lockout_check=False,
            validate_only=False,
        )
        try:
            reply = yield Call("PutKeyPolicy", request)
        except EtagMismatchError:
            if attempt == attempts:
                raise
            continue
        return to_put_result(reply)
    raise AssertionError("unreachable")  # pragma: no cover
