"""Shared fixtures: a real moto KMS server over HTTP, the fault injector in front of it,
and the real PolicyService on port 0."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import grpc
import pytest

from kms_policy_service import Server, Settings
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.support.kms_faults import KmsFaultInjector

# The service under test and its helpers talk to emulators only.
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL_STS"):
    os.environ.pop(_var, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_REGION="us-east-1",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)

ACCOUNT = "123456789012"  # moto's account
SERVICE_PRINCIPAL = f"arn:aws:iam::{ACCOUNT}:user/moto"


def policy_for(account: str = ACCOUNT, *, extra: list[dict[str, Any]] | None = None) -> str:
    """A policy that keeps the service able to manage the key (passes the lockout check)."""
    statements = [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        *(extra or []),
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def _injector(moto_url: str) -> Iterator[KmsFaultInjector]:
    injector = KmsFaultInjector(moto_url).start()
    yield injector
    injector.stop()


@pytest.fixture
def faults(_injector: KmsFaultInjector) -> Iterator[KmsFaultInjector]:
    _injector.clear()
    yield _injector
    _injector.clear()


@pytest.fixture(scope="session")
def kms(moto_url: str) -> Any:
    """A boto3 KMS client straight to moto, for test set-up (never through the injector)."""
    return boto3.client("kms", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture
def key(kms: Any) -> dict[str, Any]:
    """A fresh customer key whose policy lets the service manage it."""
    meta: dict[str, Any] = kms.create_key(Policy=policy_for())["KeyMetadata"]
    return meta


@dataclass
class RunningService:
    server: Server
    channel: grpc.aio.Channel
    stub: pb_grpc.PolicyServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def service_settings(kms_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "kms_endpoint_url": kms_url,
        "sts_endpoint_url": kms_url,
        "retry_base": 0.01,
        "retry_cap": 0.05,
        "shutdown_grace": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the service's settings."""
    return {}


@pytest.fixture
async def service(
    faults: KmsFaultInjector, settings_overrides: dict[str, Any]
) -> AsyncIterator[RunningService]:
    server = Server(service_settings(faults.url, **settings_overrides))
    await server.startup()
    faults.clear()  # start-up's STS call is not part of any test
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield RunningService(server, channel, pb_grpc.PolicyServiceStub(channel))
    finally:
        await channel.close()
        await server.shutdown()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    from tests.support.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.kill()
