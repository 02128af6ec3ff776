"""TLS and mutual TLS on the listener: identities from certificates, rotation without restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service import Server
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import service_settings
from tests.support.certs import CertAuthority, Pair
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

API = "spiffe://cluster.local/ns/payments/sa/api"


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CertAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    server_cert, server_key = ca.issue(
        "kms-policy", dns=("localhost",), ips=("127.0.0.1",), server=True
    ).write(tmp_path, "server")
    (tmp_path / "authz.yaml").write_text(
        f"rules:\n  - callers: ['{API}', 'dns-only.payments', 'cn:cn-only']\n    actions: ['GetKeyPolicy']\n    keys: ['*']\n"
    )
    return {
        "ca": ca,
        "dir": tmp_path,
        "settings": {
            "tls_cert": str(server_cert),
            "tls_key": str(server_key),
            "tls_client_ca": str(tmp_path / "ca.crt"),
            "authz_policy": str(tmp_path / "authz.yaml"),
        },
    }


@pytest.fixture
async def tls_server(faults: KmsFaultInjector, pki: dict[str, Any]) -> AsyncIterator[Server]:
    server = Server(service_settings(faults.url, **pki["settings"]))
    await server.startup()
    yield server
    await server.shutdown()


def channel(server: Server, ca: CertAuthority, client: Pair | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.pem,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(f"localhost:{server.port}", creds)


@pytest.mark.parametrize(
    ("client_names", "identity"),
    [
        ({"uris": (API,), "dns": ("also.dns",)}, API),
        ({"dns": ("dns-only.payments", "second.dns")}, "dns-only.payments"),
        ({}, "cn:cn-only"),  # a CN is named `cn:<CN>`, apart from SPIFFE IDs and DNS names
    ],
    ids=["spiffe", "dns", "cn"],
)
async def test_a_client_certificate_identifies_the_caller(
    tls_server: Server,
    pki: dict[str, Any],
    key: dict[str, Any],
    client_names: dict[str, Any],
    identity: str,
) -> None:
    client = pki["ca"].issue("cn-only", **client_names)
    async with channel(tls_server, pki["ca"], client) as ch:
        reply = await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id=key["Arn"])
        )
        assert reply.key_arn == key["Arn"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # only Get is granted
            await pb_grpc.PolicyServiceStub(ch).ListKeyPolicies(
                pb.ListKeyPoliciesRequest(key_id=key["Arn"])
            )
        assert details_of(caught.value).reason == "CALLER_NOT_AUTHORIZED"
        assert details_of(caught.value).error_info.metadata["caller"] == identity


async def test_a_client_without_a_certificate_is_refused_by_tls(
    tls_server: Server, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    async with channel(tls_server, pki["ca"], None) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(
    tls_server: Server, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    stranger = CertAuthority("someone else").issue("cn-only", uris=(API,))
    async with channel(tls_server, pki["ca"], stranger) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_are_served_without_a_restart(
    tls_server: Server, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    new_ca = CertAuthority("rotated CA")
    directory: Path = pki["dir"]
    new_ca.issue("kms-policy", dns=("localhost",), ips=("127.0.0.1",), server=True).write(
        directory, "server"
    )
    (directory / "ca.crt").write_bytes(new_ca.pem)
    client = new_ca.issue("cn-only", uris=(API,))
    async with channel(tls_server, new_ca, client) as ch:
        reply = await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=5
        )
    assert reply.key_arn == key["Arn"]
    async with channel(tls_server, pki["ca"], pki["ca"].issue("cn-only", uris=(API,))) as ch:
        with pytest.raises(grpc.aio.AioRpcError):  # the old chain is no longer trusted
            await pb_grpc.PolicyServiceStub(ch).GetKeyPolicy(
                pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=5
            )


async def test_the_python_client_speaks_mutual_tls(
    tls_server: Server, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    from kms_policy_client import ClientOptions, PolicyClient, TLSConfig

    directory: Path = pki["dir"]
    cert, private = pki["ca"].issue("cn-only", uris=(API,)).write(directory, "client")
    tls = TLSConfig(ca_file=str(directory / "ca.crt"), cert_file=str(cert), key_file=str(private))
    async with PolicyClient(
        f"localhost:{tls_server.port}", options=ClientOptions(tls=tls)
    ) as client:
        assert (await client.get_policy(key["Arn"])).key_arn == key["Arn"]
