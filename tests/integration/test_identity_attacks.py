"""Nobody may become somebody else, through the real server on a real port: XFCC headers
that smuggle another identity, proxied requests without a client identity, CNs posing as
SPIFFE IDs, and CNs that try to forge text log lines."""

from __future__ import annotations

import io
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from kms_policy_service import Server, logs
from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import RunningService, policy_for, service_settings
from tests.support.certs import CertAuthority, Pair
from tests.support.kms_faults import KmsFaultInjector
from tests.support.status import details_of

ADMIN = "spiffe://cluster.local/ns/security/sa/key-admin"
ATTACKER = "spiffe://cluster.local/ns/other/sa/attacker"
PROXY = "spiffe://cluster.local/ns/istio-system/sa/ingress"
FORGED_LINE = "2030-01-01T00:00:00.000Z access PutKeyPolicy OK 1ms caller=" + ADMIN

# The key admin may do anything; the proxy and `local` (the loopback caller) may read;
# a CN caller is named `cn:<CN>`.
AUTHZ = f"""
rules:
  - callers: ["{ADMIN}"]
    actions: ["*"]
    keys: ["*"]
  - callers: ["{PROXY}", "local", "cn:reader"]
    actions: ["GetKeyPolicy"]
    keys: ["*"]
"""


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "authz.yaml").write_text(AUTHZ)
    return {
        "authz_policy": str(tmp_path / "authz.yaml"),
        "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),),
    }


async def get_as(service: RunningService, key_arn: str, xfcc: str | None) -> grpc.StatusCode:
    metadata = (("x-forwarded-client-cert", xfcc),) if xfcc is not None else ()
    try:
        await service.stub.GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id=key_arn), metadata=metadata, timeout=10
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("xfcc", "expected", "named"),
    [
        # an escaped quote does not end the Subject: the caller is the attacker
        (
            f'Hash=0;Subject="O=x\\";URI={ADMIN};\\"";URI={ATTACKER}',
            grpc.StatusCode.PERMISSION_DENIED,
            ATTACKER,
        ),
        # an escaped comma does not end the O value: there is no CN, nobody is named
        (f'Hash=0;Subject="O=x\\,CN={ADMIN}"', grpc.StatusCode.UNAUTHENTICATED, None),
        # a CN that reads as a SPIFFE ID is a CN
        (f'Hash=0;Subject="CN={ADMIN}"', grpc.StatusCode.PERMISSION_DENIED, f"cn:{ADMIN}"),
        # a malformed header names nobody, even with a URI in it
        (f'Hash=0;Subject="O=x;URI={ADMIN}', grpc.StatusCode.UNAUTHENTICATED, None),
        # a URI that is not a SPIFFE ID, or a DNS name that is not a hostname, names nobody
        (f"Hash=0;URI=cn:{ADMIN}", grpc.StatusCode.UNAUTHENTICATED, None),
        (f"Hash=0;DNS={ADMIN}", grpc.StatusCode.UNAUTHENTICATED, None),
    ],
    ids=["escaped-quote", "escaped-comma", "cn-as-spiffe", "unterminated", "uri-cn", "dns"],
)
async def test_an_xfcc_header_cannot_smuggle_the_key_admins_identity(
    service: RunningService,
    key: dict[str, Any],
    xfcc: str,
    expected: grpc.StatusCode,
    named: str | None,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for(), validate_only=True),
            metadata=(("x-forwarded-client-cert", xfcc),),
            timeout=10,
        )
    assert caught.value.code() == expected
    if named is not None:
        assert details_of(caught.value).error_info.metadata["caller"] == named
        assert details_of(caught.value).reason == "CALLER_NOT_AUTHORIZED"
    else:
        assert details_of(caught.value).reason == "UNAUTHENTICATED"


async def test_the_key_admin_through_the_proxy_is_still_the_key_admin(
    service: RunningService, key: dict[str, Any]
) -> None:
    # The positive control for the attacks above: the same header shape, honestly built.
    header = f'By={PROXY};Hash=0;Subject="O=x\\";CN=y";URI={ADMIN};DNS=admin.example'
    assert await get_as(service, key["Arn"], header) == grpc.StatusCode.OK
    assert await get_as(service, key["Arn"], 'Hash=0;Subject="CN=reader,O=x"') == (
        grpc.StatusCode.OK
    )


@pytest.mark.parametrize(
    "xfcc",
    [f"By={PROXY};Hash=abc", f'By={PROXY};Hash=abc;Subject=""', None],
    ids=["no-client-identity", "empty-subject", "no-header"],
)
async def test_a_proxied_request_without_a_client_identity_is_not_local(
    service: RunningService, key: dict[str, Any], xfcc: str | None
) -> None:
    # On this loopback listener `local` may read; a request from the trusted proxy
    # range is the proxy's client, never `local`.
    assert await get_as(service, key["Arn"], xfcc) == grpc.StatusCode.UNAUTHENTICATED


# -- over mutual TLS ---------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = CertAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    cert, private = ca.issue(
        "kms-policy", dns=("localhost",), ips=("127.0.0.1",), server=True
    ).write(tmp_path, "server")
    (tmp_path / "authz.yaml").write_text(AUTHZ)
    return {
        "ca": ca,
        "settings": {
            "tls_cert": str(cert),
            "tls_key": str(private),
            "tls_client_ca": str(tmp_path / "ca.crt"),
            "authz_policy": str(tmp_path / "authz.yaml"),
        },
    }


@asynccontextmanager
async def tls_server(faults: KmsFaultInjector, settings: dict[str, Any]) -> AsyncIterator[Server]:
    server = Server(service_settings(faults.url, **settings))
    await server.startup()
    try:
        yield server
    finally:
        await server.shutdown()


def stub_for(server: Server, ca: CertAuthority, client: Pair) -> tuple[grpc.aio.Channel, Any]:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.pem, private_key=client.key, certificate_chain=client.cert
    )
    channel = grpc.aio.secure_channel(f"localhost:{server.port}", creds)
    return channel, pb_grpc.PolicyServiceStub(channel)


async def test_a_cn_is_never_a_spiffe_id(
    faults: KmsFaultInjector, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    poser = pki["ca"].issue(ADMIN)  # CN=spiffe://.../key-admin, no URI SAN
    reader = pki["ca"].issue("reader")
    async with tls_server(faults, pki["settings"]) as server:
        channel, stub = stub_for(server, pki["ca"], poser)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details_of(caught.value).error_info.metadata["caller"] == f"cn:{ADMIN}"
        channel, stub = stub_for(server, pki["ca"], reader)
        async with channel:  # a rule for `cn:reader` names that CN
            reply = await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=10)
        assert reply.key_arn == key["Arn"]


async def test_a_proxys_certificate_is_not_its_clients_identity(
    faults: KmsFaultInjector, pki: dict[str, Any], key: dict[str, Any]
) -> None:
    proxy = pki["ca"].issue("ingress", uris=(PROXY,))  # may read on its own account
    settings = {**pki["settings"], "trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),)}
    async with tls_server(faults, settings) as server:
        channel, stub = stub_for(server, pki["ca"], proxy)
        async with channel:
            for header in (f"By={PROXY};Hash=abc", None):
                metadata = (("x-forwarded-client-cert", header),) if header else ()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetKeyPolicy(
                        pb.GetKeyPolicyRequest(key_id=key["Arn"]), metadata=metadata, timeout=10
                    )
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.GetKeyPolicy(  # its client, named in the header, may
                pb.GetKeyPolicyRequest(key_id=key["Arn"]),
                metadata=(("x-forwarded-client-cert", f"By={PROXY};URI={ADMIN}"),),
                timeout=10,
            )
            assert reply.key_arn == key["Arn"]


@pytest.fixture
def text_logs() -> Iterator[Callable[[], list[str]]]:
    """Route the service's logs through the real text writer into a buffer."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    logs.configure("INFO", "text", stream=out)

    def lines() -> list[str]:
        logs.flush()  # writes out what is queued
        return out.getvalue().split("\n")

    yield lines
    logs.configure(logging.getLevelName(level), "json", stream=io.StringIO())
    logs.flush()
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_a_cn_with_a_newline_cannot_forge_a_text_log_line(
    faults: KmsFaultInjector,
    pki: dict[str, Any],
    key: dict[str, Any],
    text_logs: Callable[[], list[str]],
) -> None:
    forger = pki["ca"].issue(f"x\n{FORGED_LINE}\r\u2028", validate_names=False)
    async with tls_server(faults, pki["settings"]) as server:
        channel, stub = stub_for(server, pki["ca"], forger)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetKeyPolicy(
                    pb.GetKeyPolicyRequest(key_id=key["Arn"]),
                    metadata=(("x-request-id", "r-forge"),),
                    timeout=10,
                )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lines = text_logs()
    assert lines[-1] == ""  # every record ends its line
    access = [line for line in lines if "request_id=r-forge" in line]
    assert len(access) == 1
    assert f"caller=cn:x\\n{FORGED_LINE.split(' ')[0]}" in access[0].replace('"', "")
    assert "\\r\\u2028" in access[0]
    assert not [line for line in lines if line.startswith("2030-")]
    assert all(line.isprintable() for line in lines)
