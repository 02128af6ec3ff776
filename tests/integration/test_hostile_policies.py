"""Hostile policy text through the real server: patterns that must not pile up in memory,
escapes that encode no character, and principals that are not principals."""

from __future__ import annotations

import fnmatch
import gc
import json
import os
import string
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service.validation.document import MAX_POLICY_BYTES
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

_LETTERS = bytes(ord(string.ascii_letters[b % 52]) for b in range(256))
# The issue asks for 10,000; the suite runs fewer, the docs figure comes from a run with
# KMS_POLICY_PATTERN_REQUESTS=10000.
REQUESTS = int(os.environ.get("KMS_POLICY_PATTERN_REQUESTS", "2000"))
WARM_UP = 200


def rss_bytes() -> int:
    """This process's resident set: the server runs in it (the `service` fixture)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def policy_with_action(action: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "S",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                    "Action": action,
                    "Resource": "*",
                }
            ],
        }
    )


def unique_action_policy() -> str:
    """A policy as large as KMS allows, nearly all of it one random `kms:` action name."""
    room = MAX_POLICY_BYTES - len(policy_with_action("kms:"))
    return policy_with_action("kms:" + os.urandom(room).translate(_LETTERS).decode())


async def validate_unique_actions(service: RunningService, count: int) -> None:
    for _ in range(count):
        reply = await service.stub.ValidateKeyPolicy(
            pb.ValidateKeyPolicyRequest(policy=unique_action_policy()), timeout=10
        )
        assert [f.code for f in reply.findings] == ["UNKNOWN_ACTION"]


async def test_unique_32kb_actions_neither_compile_patterns_nor_grow_memory(
    service: RunningService,
) -> None:
    assert len(unique_action_policy().encode()) == MAX_POLICY_BYTES
    await validate_unique_actions(service, WARM_UP)
    misses = fnmatch._compile_pattern.cache_info().misses  # type: ignore[attr-defined]
    gc.collect()
    before = rss_bytes()
    await validate_unique_actions(service, REQUESTS)
    gc.collect()
    grown = rss_bytes() - before
    print(f"RSS after {REQUESTS} unique 32 KB actions: {grown / 2**20:+.1f} MiB")
    # fnmatch compiled and kept every distinct pattern: ~0.6 MB per request here.
    assert fnmatch._compile_pattern.cache_info().misses - misses < 10  # type: ignore[attr-defined]
    assert grown < 5 * 2**20


# -- unpaired UTF-16 surrogate escapes ------------------------------------------------

ROOT = "arn:aws:iam::123456789012:root"


def escaped_policy(*, sid: str = "S", action: str = "kms:*", key: str | None = None) -> str:
    """A plain-ASCII policy; json.dumps spells a lone surrogate as its \\uXXXX escape."""
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": ROOT},
        "Action": action,
        "Resource": "*",
    }
    if key is not None:
        statement[key] = "x"
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    assert text.isascii()
    return text


SURROGATE_CASES = [
    (escaped_policy(sid="a\ud800"), "Statement[0].Sid"),
    (escaped_policy(action="kms:Put\udfffKeyPolicy"), "Statement[0].Action"),
    (escaped_policy(key="\ud800"), "Statement[0].\\ud800"),
]


@pytest.mark.parametrize(("policy", "path"), SURROGATE_CASES)
async def test_validate_reports_an_unpaired_surrogate_as_an_invalid_character(
    service: RunningService, policy: str, path: str
) -> None:
    reply = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy))
    assert [(f.code, f.path) for f in reply.findings] == [("INVALID_CHARACTER", path)]
    assert "\\ud" in reply.findings[0].message and reply.findings[0].message.isascii()


@pytest.mark.parametrize(("policy", "path"), SURROGATE_CASES)
async def test_put_refuses_an_unpaired_surrogate_with_its_path_before_kms(
    service: RunningService,
    faults: KmsFaultInjector,
    key: dict[str, Any],
    policy: str,
    path: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy))
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_POLICY")
    assert details.error_info.metadata["findingCode"] == "INVALID_CHARACTER"
    assert details.bad_request is not None
    assert [v.reason for v in details.bad_request.field_violations] == ["INVALID_CHARACTER"]
    assert details.bad_request.field_violations[0].description.startswith(f"{path}: ")
    assert "PutKeyPolicy" not in faults.operations()


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if getattr(request, "param", None) == "audited":
        return {"audit_log": str(tmp_path / "audit.jsonl")}
    return {}


@pytest.mark.parametrize("settings_overrides", ["plain", "audited"], indirect=True)
async def test_a_policy_stored_with_a_surrogate_escape_stays_manageable(
    service: RunningService,
    faults: KmsFaultInjector,
    kms: Any,
    key: dict[str, Any],
    settings_overrides: dict[str, Any],
) -> None:
    stored = escaped_policy(sid="written by another tool \ud800")
    kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=stored)
    got = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    assert got.policy == stored and len(got.etag) == 64
    clean = policy_for()
    put = await service.stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=clean, etag=got.etag)
    )
    assert put.etag != got.etag
    now = kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"]
    assert json.loads(now) == json.loads(clean)
    if "audit_log" in settings_overrides:
        lines = Path(settings_overrides["audit_log"]).read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert records[-1]["outcome"] == "OK"
        assert records[-1]["previous_policy"] == stored


# -- principals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "principal",
    [
        # Digits of another script: `\d` takes them; an account ID is ASCII. Read as an
        # account, such a grant would also have slipped past the principal_accounts guardrail.
        "arn:aws:iam::" + "\u0661" * 12 + ":root",
        "arn:aws:sts::" + "\u0661" * 12 + ":assumed-role/r/s",
        "arn:aws:iam::123456789012:role/r\u00f4le",  # IAM names are ASCII
    ],
)
async def test_principals_in_other_scripts_are_refused_before_kms(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], principal: str
) -> None:
    policy = policy_for(
        extra=[
            {
                "Sid": "Lookalike",
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    reply = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy))
    assert [(f.code, f.path) for f in reply.findings] == [
        ("INVALID_PRINCIPAL", "Statement[1].Principal.AWS")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy))
    assert details_of(caught.value).error_info.metadata["findingCode"] == "INVALID_PRINCIPAL"
    assert "PutKeyPolicy" not in faults.operations()


@pytest.mark.parametrize("rpc", ["Validate", "Put"])
async def test_an_iam_group_is_not_a_principal(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any], rpc: str
) -> None:
    group = "arn:aws:iam::123456789012:group/admins"
    policy = policy_for(
        extra=[
            {
                "Sid": "Admins",
                "Effect": "Allow",
                "Principal": {"AWS": group},
                "Action": "kms:Decrypt",
                "Resource": "*",
            }
        ]
    )
    path = "Statement[1].Principal.AWS"
    if rpc == "Validate":
        reply = await service.stub.ValidateKeyPolicy(pb.ValidateKeyPolicyRequest(policy=policy))
        assert [(f.code, f.path) for f in reply.findings] == [("INVALID_PRINCIPAL", path)]
        assert "groups are not principals" in reply.findings[0].message
        return
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy))
    details = details_of(caught.value)
    assert (details.code, details.error_info.metadata["findingCode"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PRINCIPAL",
    )
    assert "groups are not principals" in details.message
    assert "PutKeyPolicy" not in faults.operations()
