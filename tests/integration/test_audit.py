"""The audit trail through the real server: every attempted change is recorded, the intent
is on disk before KMS is called, and a record alone is enough to roll a change back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service.etag import policy_etag
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.audit_trail import DECRYPT, records
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.log"


@pytest.fixture
def settings_overrides(
    audit_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    values: dict[str, Any] = {"audit_log": str(audit_path), "key_write_rate_limit": None}
    for name, value in getattr(request, "param", {}).items():
        if value == "AUTHZ":  # a policy that lets `local` only read
            authz = tmp_path / "authz.yaml"
            authz.write_text(
                "rules:\n  - callers: ['local']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
            )
            value = str(authz)
        elif value == "UNWRITABLE":  # a file where the log's directory should be
            (tmp_path / "blocker").write_text("")
            value = str(tmp_path / "blocker" / "audit.log")
        values[name] = value
    return values


async def test_a_successful_put_writes_intent_then_outcome_with_everything_needed(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    previous = (await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))).policy
    new = policy_for(extra=[DECRYPT])
    reply = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["KeyId"], policy=new),
        metadata=(("x-request-id", "audit-1"),),
    )
    intent, outcome = records(audit_path)
    assert (intent["phase"], outcome["phase"]) == ("intent", "outcome")
    for r in (intent, outcome):
        assert (
            r["request_id"] == "audit-1"
            and r["caller"] == "local"
            and r["peer"].startswith("ipv4:127.0.0.1")
        )
        assert (
            r["action"] == "PutKeyPolicy"
            and r["key_arn"] == key["Arn"]
            and r["policy_name"] == "default"
        )
        assert r["previous_etag"] == policy_etag(previous) and r["new_etag"] == reply.etag
        assert r["bypass_lockout_check"] is False
        assert r["changes"] == {"added": ["AppDecrypt"], "removed": [], "changed": []}
        assert r["previous_policy"] == previous and r["new_policy"] == new
        assert r["time"].endswith("Z")
    assert "outcome" not in intent
    assert (outcome["outcome"], outcome["reason"]) == ("OK", "")
    assert len(intent["put_id"]) == 24 and outcome["put_id"] == intent["put_id"]


async def test_two_puts_with_one_request_id_are_told_apart_by_put_id(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    """The request id is the caller's to choose: the service's own id ties records."""
    for sid in ("First", "Second"):
        extra = [{**DECRYPT, "Sid": sid}]
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=extra)),
            metadata=(("x-request-id", "same"),),
        )
    written = records(audit_path)
    assert [r["request_id"] for r in written] == ["same"] * 4
    first, second = {r["put_id"] for r in written[:2]}, {r["put_id"] for r in written[2:]}
    assert len(first) == len(second) == 1 and first != second


async def test_the_intent_is_on_disk_before_kms_is_called(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], audit_path: Path
) -> None:
    faults.add(Rule("PutKeyPolicy", "sleep", delay=0.5))
    put = asyncio.ensure_future(
        service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT]))
        )
    )
    # KMS is holding the request now
    await until(lambda: "PutKeyPolicy" in faults.operations(), what="the Put at KMS")
    assert [r["phase"] for r in records(audit_path)] == ["intent"]
    await put
    assert [r["phase"] for r in records(audit_path)] == ["intent", "outcome"]


async def test_a_kms_failure_is_recorded_as_the_outcome(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], audit_path: Path
) -> None:
    faults.add(Rule("PutKeyPolicy", "error", "MalformedPolicyDocumentException"))
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for())
        )
    # KMS answered: a failure, never UNKNOWN (no unknown or settled record follows).
    intent, outcome = records(audit_path)
    assert intent["phase"] == "intent"
    assert (outcome["phase"], outcome["outcome"], outcome["reason"]) == (
        "outcome",
        "INVALID_ARGUMENT",
        "KMS_MALFORMED_POLICY",
    )


async def test_an_invalid_put_is_recorded_as_refused(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy='{"Version": "2012-10-17"}')
        )
    (refused,) = records(audit_path)
    assert (refused["phase"], refused["outcome"], refused["reason"]) == (
        "refused",
        "INVALID_ARGUMENT",
        "INVALID_POLICY",
    )
    assert refused["key_id"] == key["Arn"]


@pytest.mark.parametrize(
    "settings_overrides",
    [{"authz_policy": "AUTHZ"}],
    indirect=True,
)
async def test_a_denied_put_is_recorded_as_refused(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for())
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    (refused,) = records(audit_path)
    assert (refused["phase"], refused["outcome"], refused["reason"], refused["caller"]) == (
        "refused",
        "PERMISSION_DENIED",
        "CALLER_NOT_AUTHORIZED",
        "local",
    )


async def test_replaying_the_previous_policy_from_a_record_restores_the_key(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    before = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT]))
    )
    record = next(
        r for r in records(audit_path) if r["phase"] == "outcome" and r["outcome"] == "OK"
    )
    await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=record["key_arn"], policy=record["previous_policy"])
    )
    after = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    assert after.etag == before.etag == record["previous_etag"]


@pytest.mark.parametrize("settings_overrides", [{"audit_log": "UNWRITABLE"}], indirect=True)
async def test_an_unwritable_audit_log_refuses_the_put_before_any_kms_request(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for())
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE")
    assert faults.kms_operations() == []
    # reads do not need the audit log
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
