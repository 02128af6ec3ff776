"""Puts whose effect is unknown (the request reached KMS, the answer did not reach us) are
recorded as UNKNOWN, never as failed, and settled by reading the policy back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.audit_trail import DECRYPT, records
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def settings_overrides(audit_path: Path) -> dict[str, Any]:
    return {"audit_log": str(audit_path), "key_write_rate_limit": None}


def settled_records(path: Path) -> list[dict[str, Any]]:
    return [r for r in records(path) if r.get("phase") == "settled"]


def applied_at_kms(kms: Any, key: dict[str, Any]) -> bool:
    """The Put's statement is in the key's policy at moto (read around the service)."""
    return "AppDecrypt" in kms.get_key_policy(KeyId=key["Arn"], PolicyName="default")["Policy"]


async def settled(path: Path, timeout: float = 10.0) -> dict[str, Any]:
    await until(lambda: bool(settled_records(path)), timeout=timeout, what="a settled record")
    return settled_records(path)[0]


async def test_a_put_applied_whose_answers_are_lost_is_settled_by_reading_back_and_succeeds(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], audit_path: Path
) -> None:
    faults.add(Rule("PutKeyPolicy", "apply_then_drop"))
    reply = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT])), timeout=10
    )
    phases = [(r["phase"], r.get("outcome")) for r in records(audit_path)]
    assert phases == [("intent", None), ("unknown", "UNKNOWN"), ("settled", "APPLIED")]
    assert records(audit_path)[2]["new_etag"] == reply.etag
    assert len({r["put_id"] for r in records(audit_path)}) == 1  # one Put's three records


async def test_a_put_whose_deadline_ran_out_at_kms_is_unknown_then_settled_not_applied(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], audit_path: Path
) -> None:
    faults.add(Rule("PutKeyPolicy", "sleep", delay=5.0, times=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT])),
            timeout=0.5,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert details_of(caught.value).error_info.metadata["policyChange"] == "UNKNOWN"
    unknown = [r for r in records(audit_path) if r["phase"] == "unknown"]
    assert [r["outcome"] for r in unknown] == ["UNKNOWN"]
    assert "DEADLINE_EXCEEDED" in unknown[0]["reason"]
    assert (await settled(audit_path))["outcome"] == "NOT_APPLIED"  # the injector never forwarded
    assert not [r for r in records(audit_path) if r.get("outcome") == "DEADLINE_EXCEEDED"]


async def test_a_put_cancelled_by_its_caller_after_kms_applied_it_is_settled_applied(
    service: RunningService,
    faults: KmsFaultInjector,
    kms: Any,
    key: dict[str, Any],
    audit_path: Path,
) -> None:
    faults.add(Rule("PutKeyPolicy", "apply_then_drop", delay=5.0, times=1))
    call = service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT]))
    )
    # KMS (moto) has applied it; its answer is held back by the injector.
    await until(lambda: applied_at_kms(kms, key), what="moto to apply the Put")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (await settled(audit_path))["outcome"] == "APPLIED"
    outcomes = [r.get("outcome") for r in records(audit_path) if r["phase"] != "intent"]
    assert outcomes == ["UNKNOWN", "APPLIED"]


async def test_a_put_cut_off_by_the_drain_grace_is_unknown_and_settled_before_exit(
    faults: KmsFaultInjector, kms: Any, key: dict[str, Any], audit_path: Path
) -> None:
    from kms_policy_service import Server
    from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
    from tests.conftest import service_settings

    server = Server(
        service_settings(
            faults.url, audit_log=str(audit_path), key_write_rate_limit=None, shutdown_grace=0.3
        )
    )
    await server.startup()
    faults.add(Rule("PutKeyPolicy", "apply_then_drop", delay=5.0, times=1))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = pb_grpc.PolicyServiceStub(channel).PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(extra=[DECRYPT]))
        )
        await until(lambda: applied_at_kms(kms, key), what="moto to apply the Put")
        await server.shutdown()  # the grace ends while KMS holds the answer
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    finally:
        await channel.close()
    outcomes = [r.get("outcome") for r in records(audit_path) if r["phase"] != "intent"]
    assert outcomes == ["UNKNOWN", "APPLIED"]
