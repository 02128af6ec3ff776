"""Refused-attempt records through the real server: a flood of refused Puts writes a bounded
number of bounded records, and what was dropped is summarised so it still adds up."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from kms_policy_service.settings import DEFAULT_REFUSAL_RATE
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService
from tests.support.audit_trail import records
from tests.support.waiting import until

POLICY_30K = '{"Version":"2012-10-17","Statement":[],"Pad":"' + "x" * 30_000 + '"}'
RECORD_BOUND = 4096  # bytes: a refused record of a caller not authorized to write, at most


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def settings_overrides(
    audit_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "audit_log": str(audit_path),
        "key_write_rate_limit": None,
        "caller_refusal_rate_limit": None,  # measure the audit bound, not the RPC one
    }
    if getattr(request, "param", None) == "READ_ONLY":  # `local` may only read
        authz = tmp_path / "authz.yaml"
        authz.write_text(
            "rules:\n  - callers: ['local']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
        )
        values["authz_policy"] = str(authz)
    return values


def dropped_metric() -> float:
    value = REGISTRY.get_sample_value(
        "kms_policy_audit_refusals_dropped_total", {"bucket": "caller"}
    )
    return value or 0.0


async def refused_put(service: RunningService, key: dict[str, Any]) -> grpc.StatusCode:
    try:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=POLICY_30K)
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("settings_overrides", ["READ_ONLY"], indirect=True)
async def test_a_flood_of_unauthorized_puts_writes_bounded_records_and_a_summary(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    dropped_before = dropped_metric()
    started = time.monotonic()
    codes: list[grpc.StatusCode] = []
    for _ in range(10):  # 400 Puts, 40 at a time
        codes += await asyncio.gather(*(refused_put(service, key) for _ in range(40)))
    elapsed = time.monotonic() - started
    assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED}
    refused = [r for r in records(audit_path) if r["phase"] == "refused"]
    rate = DEFAULT_REFUSAL_RATE
    assert 0 < len(refused) <= rate.burst + rate.rate * elapsed + 1
    assert audit_path.stat().st_size <= len(refused) * RECORD_BOUND
    for record in refused:
        assert record["reason"] == "CALLER_NOT_AUTHORIZED" and record["authorized"] is False
        assert "new_policy" not in record and len(record["new_policy_prefix"]) == 1024
        assert record["new_policy_bytes"] == len(POLICY_30K)
        assert record["new_policy_sha256"] == hashlib.sha256(POLICY_30K.encode()).hexdigest()

    # The next refusal written (once the caller's bucket has a token) carries the summary.
    async def summarised() -> bool:
        if any(r["phase"] == "refusals_dropped" for r in records(audit_path)):
            return True
        codes.append(await refused_put(service, key))
        return False

    await until(summarised, what="a summary of the dropped records", interval=0.1)
    written = [r for r in records(audit_path) if r["phase"] == "refused"]
    summaries = [r for r in records(audit_path) if r["phase"] == "refusals_dropped"]
    dropped = sum(s["dropped"] for s in summaries)
    assert len(written) + dropped == len(codes)  # every refusal is accounted for
    assert summaries[0]["callers"] == [{"caller": "local", "dropped": summaries[0]["dropped"]}]
    assert summaries[0]["since"] <= summaries[0]["until"]
    assert dropped_metric() - dropped_before == dropped


async def test_an_authorized_callers_refused_put_keeps_the_whole_policy(
    service: RunningService, key: dict[str, Any], audit_path: Path
) -> None:
    assert await refused_put(service, key) == grpc.StatusCode.INVALID_ARGUMENT
    (refused,) = records(audit_path)
    assert (refused["phase"], refused["reason"], refused["authorized"]) == (
        "refused",
        "INVALID_POLICY",
        True,
    )
    assert refused["new_policy"] == POLICY_30K and "new_policy_prefix" not in refused
