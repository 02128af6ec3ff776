"""Authorization through the real server: the caller x action x key matrix, XFCC trust,
reload on change, and AIP-193 (no existence revealed to the unauthorized)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import ACCOUNT, RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess
from tests.support.status import details_of
from tests.support.waiting import until

READER = "spiffe://cluster.local/ns/payments/sa/reader"
WRITER = "spiffe://cluster.local/ns/payments/sa/writer"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
STRANGER = "spiffe://cluster.local/ns/other/sa/app"
MISSING_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-4000-8000-00000000dead"
OK, DENIED, NOT_FOUND = (
    grpc.StatusCode.OK,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)


@pytest.fixture(scope="module")
def keys(kms: Any) -> dict[str, str]:
    a = kms.create_key(Policy=policy_for())["KeyMetadata"]
    b = kms.create_key(Policy=policy_for())["KeyMetadata"]
    kms.create_alias(AliasName="alias/payments-a", TargetKeyId=a["KeyId"])
    kms.create_alias(AliasName="alias/other-b", TargetKeyId=b["KeyId"])
    return {"A": a["Arn"], "A_ID": a["KeyId"], "B": b["Arn"]}


@pytest.fixture
def authz_file(tmp_path: Path, keys: dict[str, str]) -> Path:
    path = tmp_path / "authz.yaml"
    path.write_text(
        f"""
rules:
  - callers: ["{READER}"]
    actions: ["GetKeyPolicy", "ListKeyPolicies", "ValidateKeyPolicy"]
    keys: ["alias/payments-*"]
  - callers: ["{WRITER}"]
    actions: ["*"]
    keys: ["{keys["A"]}"]
  - callers: ["spiffe://cluster.local/ns/ops/*"]
    actions: ["*"]
    keys: ["*"]
"""
    )
    return path


@pytest.fixture
def settings_overrides(authz_file: Path) -> dict[str, Any]:
    import ipaddress

    return {
        "authz_policy": str(authz_file),
        "authz_reload_interval": 0.1,
        "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),),
    }


def as_caller(identity: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-client-cert", f"Hash=0;URI={identity}"),)


async def outcome(
    service: RunningService, caller: str, action: str, key_id: str
) -> grpc.StatusCode:
    md = as_caller(caller) if caller else ()
    try:
        if action == "Get":
            await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key_id), metadata=md)
        elif action == "List":
            await service.stub.ListKeyPolicies(
                pb.ListKeyPoliciesRequest(key_id=key_id), metadata=md
            )
        else:
            await service.stub.PutKeyPolicy(
                pb.PutKeyPolicyRequest(key_id=key_id, policy=policy_for(), validate_only=True),
                metadata=md,
            )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == DENIED:
            assert details_of(exc).reason == "CALLER_NOT_AUTHORIZED"
            assert "keyArn" not in details_of(exc).error_info.metadata
        return exc.code()
    return OK


MATRIX = [
    # reader: by alias name only
    (READER, "Get", "alias/payments-a", OK),
    (READER, "List", "alias/payments-a", OK),
    (READER, "Put", "alias/payments-a", DENIED),
    (READER, "Get", "A", DENIED),  # the rule names aliases, not the ARN
    (READER, "Get", "alias/other-b", DENIED),
    (READER, "Get", "alias/payments-missing", NOT_FOUND),  # authorized by name: may learn it
    # writer: by resolved key ARN
    (WRITER, "Put", "alias/payments-a", OK),
    (WRITER, "Get", "A", OK),
    (WRITER, "Get", "A_ID", OK),
    (WRITER, "Get", "alias/other-b", DENIED),
    (WRITER, "Get", "B", DENIED),
    (WRITER, "Get", "alias/payments-missing", DENIED),  # not revealed: no such key
    (WRITER, "Get", MISSING_ARN, DENIED),
    # admin: everything, including learning what does not exist
    (ADMIN, "Put", "B", OK),
    (ADMIN, "Get", MISSING_ARN, NOT_FOUND),
    # nobody else
    (STRANGER, "Get", "alias/payments-a", DENIED),
    (STRANGER, "Get", MISSING_ARN, DENIED),
    # from the trusted proxy without an XFCC header: nobody (never the loopback `local`)
    ("", "Get", "alias/payments-a", grpc.StatusCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize(("caller", "action", "key_name", "expected"), MATRIX)
async def test_authorization_matrix(
    service: RunningService,
    keys: dict[str, str],
    caller: str,
    action: str,
    key_name: str,
    expected: grpc.StatusCode,
) -> None:
    assert await outcome(service, caller, action, keys.get(key_name, key_name)) == expected


async def test_a_caller_with_no_rule_for_the_action_costs_no_kms_call(
    service: RunningService, faults: KmsFaultInjector, keys: dict[str, str]
) -> None:
    assert await outcome(service, STRANGER, "Get", "alias/payments-a") == DENIED
    assert faults.kms_operations() == []


@pytest.mark.parametrize(
    ("error_code", "status"),
    [("AccessDeniedException", 400), ("ThrottlingException", 400), ("KMSInternalException", 500)],
)
async def test_a_kms_failure_while_deciding_is_not_revealed_to_an_unauthorized_caller(
    service: RunningService,
    faults: KmsFaultInjector,
    keys: dict[str, str],
    error_code: str,
    status: int,
) -> None:
    from tests.support.kms_faults import Rule

    faults.add(Rule("DescribeKey", "error", error_code, status=status))
    # WRITER's only rule names key A's ARN: deciding about alias/other-b needs DescribeKey.
    assert await outcome(service, WRITER, "Get", "alias/other-b") == DENIED


async def test_another_account_is_not_revealed_to_an_unauthorized_caller(
    service: RunningService, faults: KmsFaultInjector
) -> None:
    foreign = "arn:aws:kms:us-east-1:999999999999:key/00000000-0000-4000-8000-000000000001"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id=foreign), metadata=as_caller(WRITER)
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (DENIED, "CALLER_NOT_AUTHORIZED")
    assert ACCOUNT not in str(caught.value.details()) + str(details.error_info)
    assert faults.kms_operations() == []


async def test_xfcc_from_an_untrusted_peer_is_ignored(
    faults: KmsFaultInjector, authz_file: Path, keys: dict[str, str]
) -> None:
    from kms_policy_service import Server
    from tests.conftest import service_settings

    server = Server(
        service_settings(faults.url, authz_policy=str(authz_file))
    )  # no trusted proxies
    await server.startup()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                    pb.GetKeyPolicyRequest(key_id=keys["A"]), metadata=as_caller(ADMIN)
                )
        assert details_of(caught.value).reason == "CALLER_NOT_AUTHORIZED"
        assert "'local'" in details_of(caught.value).message
    finally:
        await server.shutdown()


async def test_the_policy_reloads_on_change_and_a_broken_file_keeps_the_old_rules(
    service: RunningService, authz_file: Path, keys: dict[str, str]
) -> None:
    assert await outcome(service, STRANGER, "Get", keys["A"]) == DENIED
    authz_file.write_text(
        f"rules:\n  - callers: ['{STRANGER}']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
    )

    async def allowed() -> bool:
        return await outcome(service, STRANGER, "Get", keys["A"]) == OK

    await until(allowed, what="the changed policy reloaded", interval=0.05)
    failed_reloads = reloads("error")
    authz_file.write_text("rules: [this is not valid")
    # the watcher read the broken file
    await until(lambda: reloads("error") != failed_reloads, what="the broken file read")
    assert await outcome(service, STRANGER, "Get", keys["A"]) == OK  # previous rules kept


def reloads(result: str) -> float:
    """kms_policy_authz_reloads_total{result=...} of this process (the in-process server's)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("kms_policy_authz_reloads_total", {"result": result}) or 0.0


async def test_an_unidentified_caller_is_unauthenticated_where_identity_is_required(
    faults: KmsFaultInjector, authz_file: Path, keys: dict[str, str]
) -> None:
    # A non-loopback listener (all interfaces, reached over loopback) has no `local` caller.
    proc = ServiceProcess(
        [
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--authz-policy",
            str(authz_file),
            "--kms-endpoint-url",
            faults.url,
            "--sts-endpoint-url",
            faults.url,
        ]
    ).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                    pb.GetKeyPolicyRequest(key_id=keys["A"])
                )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        logs = proc.drain_logs()
        assert any("INSECURE" in r.get("message", "") for r in logs)
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ([], "needs --tls-cert"),
        (
            ["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"],
            "needs --authz-policy",
        ),
    ],
)
def test_a_network_listener_refuses_to_start_without_tls_or_authorization(
    extra: list[str], complaint: str
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "kms_policy_service", "--listen", "0.0.0.0:0", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": "service:clients:protos", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert complaint in result.stderr


async def test_sighup_reloads_the_policy(
    faults: KmsFaultInjector, authz_file: Path, keys: dict[str, str]
) -> None:
    proc = ServiceProcess(
        [
            "--listen",
            "127.0.0.1:0",
            "--authz-policy",
            str(authz_file),
            "--authz-reload-interval",
            "3600",  # only the signal can reload it
            "--trusted-proxy",
            "127.0.0.1/32",
            "--kms-endpoint-url",
            faults.url,
            "--sts-endpoint-url",
            faults.url,
        ]
    ).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc

            stub = pb_grpc.PolicyServiceStub(ch)

            async def code() -> grpc.StatusCode:
                try:
                    await stub.GetKeyPolicy(
                        pb.GetKeyPolicyRequest(key_id=keys["A"]), metadata=as_caller(STRANGER)
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return OK

            assert await code() == DENIED
            authz_file.write_text(
                f"rules:\n  - callers: ['{STRANGER}']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
            )
            window = time.monotonic() + 0.3  # not polled for an hour: nothing reads it now
            while time.monotonic() < window:
                assert await code() == DENIED
                await asyncio.sleep(0.02)
            assert proc.proc is not None
            proc.proc.send_signal(__import__("signal").SIGHUP)

            async def allowed() -> bool:
                return await code() == OK

            await until(allowed, what="SIGHUP to reload", interval=0.05)
    finally:
        proc.stop()
