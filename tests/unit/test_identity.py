"""Caller identity: certificate SANs, XFCC elements, and the trusted-proxy rule."""

from __future__ import annotations

import ipaddress

import pytest

from kms_policy_service.identity import Identifier, certificate_identity, peer_host, xfcc_identity

SPIFFE = "spiffe://cluster.local/ns/payments/sa/api"


@pytest.mark.parametrize(
    ("auth", "identity"),
    [
        (
            {
                "peer_uri": [b"https://x", SPIFFE.encode()],
                "peer_dns": [b"api"],
                "x509_common_name": [b"cn"],
            },
            SPIFFE,
        ),
        ({"peer_dns": [b"api.payments", b"b"], "x509_common_name": [b"cn"]}, "api.payments"),
        ({"x509_common_name": [b"cn"]}, "cn"),
        ({"transport_security_type": [b"insecure"]}, None),
    ],
)
def test_certificate_identity_prefers_spiffe_then_dns_then_cn(
    auth: dict[str, list[bytes]], identity: str | None
) -> None:
    assert certificate_identity(auth) == identity


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        (f"By=spiffe://cluster.local/ns/kms/sa/kms;Hash=abc;URI={SPIFFE}", SPIFFE),
        ('Hash=abc;Subject="CN=api,O=Example";DNS=api.example.com', "api.example.com"),
        ('Hash=abc;Subject="CN=api,O=Example"', "api"),
        (f"URI=spiffe://first;Hash=a,By=x;URI={SPIFFE}", SPIFFE),  # the nearest proxy's element
        ("Hash=abc", None),
        ("", None),
    ],
)
def test_xfcc_identity(header: str, identity: str | None) -> None:
    assert xfcc_identity(header) == identity


class FakeContext:
    def __init__(
        self,
        peer: str,
        metadata: tuple[tuple[str, str], ...] = (),
        auth: dict[str, list[bytes]] | None = None,
    ) -> None:
        self._peer, self._metadata, self._auth = peer, metadata, auth or {}

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


def identify(ident: Identifier, ctx: FakeContext) -> tuple[str | None, str]:
    caller = ident.identify(ctx)  # type: ignore[arg-type]
    return caller.identity, caller.source


def test_xfcc_is_believed_only_from_a_trusted_peer() -> None:
    ident = Identifier(
        loopback_listener=False, trusted_proxies=[ipaddress.ip_network("10.0.0.0/8")]
    )
    header = (("x-forwarded-client-cert", f"URI={SPIFFE}"),)
    assert identify(ident, FakeContext("ipv4:10.1.2.3:5000", header)) == (SPIFFE, "xfcc")
    assert identify(ident, FakeContext("ipv4:192.168.1.1:5000", header)) == (None, "none")


def test_loopback_listener_without_certificate_means_local() -> None:
    ident = Identifier(loopback_listener=True, trusted_proxies=[])
    assert identify(ident, FakeContext("ipv4:127.0.0.1:5000")) == ("local", "local")
    assert identify(
        ident, FakeContext("ipv4:127.0.0.1:5000", auth={"peer_uri": [SPIFFE.encode()]})
    ) == (SPIFFE, "mtls")


def test_peer_host() -> None:
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/s") == "unix:/tmp/s"
