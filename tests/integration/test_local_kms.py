"""The embedded default: `kms-policy-service --local-kms` serves a demo key a newcomer can use,
and the standard AWS SDK configuration (endpoint variables, credentials) is honoured."""

from __future__ import annotations

import json
from typing import Any

import grpc

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess, loopback_service

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


async def test_local_kms_serves_the_demo_key_for_get_and_put() -> None:
    proc = ServiceProcess(["--local-kms", "--listen", "127.0.0.1:0"]).start()
    try:
        demo = next(r for r in proc.drain_logs() if "demo_key_arn" in r)
        arn = demo["demo_key_arn"]
        assert "grpcurl -plaintext" in demo["grpcurl"] and arn in demo["grpcurl"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            stub = pb_grpc.PolicyServiceStub(ch)
            got = await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn))
            assert got.key_arn == arn and len(got.etag) == 64
            assert (
                await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id="alias/demo"))
            ).key_arn == arn
            new = policy_for(
                extra=[
                    {
                        "Sid": "Demo",
                        "Effect": "Allow",
                        "Principal": {"AWS": "123456789012"},
                        "Action": "kms:Decrypt",
                        "Resource": "*",
                    }
                ]
            )
            put = await stub.PutKeyPolicy(pb.PutKeyPolicyRequest(key_id=arn, policy=new))
            again = await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=arn))
            assert again.policy == new and again.etag == put.etag
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0


async def test_standard_aws_endpoint_variables_are_honoured_and_credentials_never_logged(
    faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    proc = ServiceProcess(
        ["--listen", "127.0.0.1:0", "--log-level", "DEBUG"],
        env={
            "AWS_ENDPOINT_URL_KMS": faults.url,
            "AWS_ENDPOINT_URL_STS": faults.url,
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID",
            "AWS_SECRET_ACCESS_KEY": SECRET,
        },
    ).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            reply = await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key["Arn"])
            )
        assert reply.key_arn == key["Arn"]
        assert "GetKeyPolicy" in faults.operations()  # reached through the variable's endpoint
    finally:
        proc.stop()
    text = json.dumps(proc.drain_logs())
    assert SECRET not in text and "AKIAEXAMPLEKEYID" not in text


def test_missing_credentials_refuse_to_start_with_a_clear_message(
    faults: KmsFaultInjector, tmp_path: Any
) -> None:
    import subprocess
    import sys

    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": "service:clients:protos",
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kms_policy_service",
            *loopback_service(on=faults.url),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 3
    assert "could not start" in result.stderr and "NoCredentials" in result.stderr
