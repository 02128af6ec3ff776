"""Caller identity: certificate SANs, XFCC elements per Envoy's grammar, DNs per RFC 4514,
disjoint identity namespaces, and the trusted-proxy rule."""

from __future__ import annotations

import ipaddress

import pytest

from kms_policy_service.identity import (
    Identifier,
    MalformedHeader,
    certificate_identity,
    dn_attributes,
    peer_host,
    xfcc_elements,
    xfcc_identity,
)

SPIFFE = "spiffe://cluster.local/ns/payments/sa/api"
ADMIN = "spiffe://cluster.local/ns/security/sa/key-admin"
ATTACKER = "spiffe://cluster.local/ns/other/sa/attacker"


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
        ({"x509_common_name": [b"cn"]}, "cn:cn"),
        ({"transport_security_type": [b"insecure"]}, None),
    ],
)
def test_certificate_identity_prefers_spiffe_then_dns_then_cn(
    auth: dict[str, list[bytes]], identity: str | None
) -> None:
    assert certificate_identity(auth) == identity


@pytest.mark.parametrize(
    ("auth", "identity"),
    [
        ({"x509_common_name": [ADMIN.encode()]}, f"cn:{ADMIN}"),  # a CN is never a SPIFFE ID
        ({"x509_common_name": [b"local"]}, "cn:local"),
        ({"x509_common_name": [b"api.payments"]}, "cn:api.payments"),
        ({"peer_dns": [ADMIN.encode()], "x509_common_name": [b"x"]}, "cn:x"),  # not a hostname
        ({"peer_dns": [b"local", b"api.payments"]}, "api.payments"),  # `local` is the pod
        ({"peer_dns": [b"*.payments.svc"]}, "*.payments.svc"),
        ({"peer_uri": [b"spiffe://"], "peer_dns": [b"api"]}, "api"),  # no trust domain
        ({"peer_uri": [b"spiffe://td/a b"]}, None),
        ({"x509_common_name": [b""]}, None),
    ],
)
def test_identity_namespaces_never_overlap(
    auth: dict[str, list[bytes]], identity: str | None
) -> None:
    assert certificate_identity(auth) == identity


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        (f"By=spiffe://cluster.local/ns/kms/sa/kms;Hash=abc;URI={SPIFFE}", SPIFFE),
        ('Hash=abc;Subject="CN=api,O=Example";DNS=api.example.com', "api.example.com"),
        ('Hash=abc;Subject="CN=api,O=Example"', "cn:api"),
        (f"URI=spiffe://first;Hash=a,By=x;URI={SPIFFE}", SPIFFE),  # the nearest proxy's element
        (f"URI={SPIFFE};URI={ADMIN}", SPIFFE),  # the first URI wins
        (f"DNS=a.example;DNS=b.example;uri={SPIFFE}", SPIFFE),  # keys are case-insensitive
        (f'URI="{SPIFFE}"', SPIFFE),
        (f"Hash=abc ; URI={SPIFFE} , By=x ; DNS=api.example", "api.example"),
        ("Hash=abc", None),
        ("By=spiffe://cluster.local/ns/istio/sa/ingress;Hash=abc", None),  # By is the proxy
        ('Hash=abc;Subject=""', None),
        ("", None),
    ],
)
def test_xfcc_identity(header: str, identity: str | None) -> None:
    assert xfcc_identity(header) == identity


@pytest.mark.parametrize(
    ("header", "identity"),
    [
        # An escaped quote does not end the Subject: the URI inside it is Subject text.
        (f'Subject="O=x\\";URI={ADMIN};\\"";URI={ATTACKER}', ATTACKER),
        (f'Subject="O=x\\";URI={ADMIN};\\""', None),
        # An escaped comma does not end the DN value: there is no CN in this subject.
        (f'Subject="O=x\\,CN={ADMIN}"', None),
        (f'Subject="O=x\\2CCN={ADMIN}"', None),  # the same comma as a hex escape
        # A CN that reads as a SPIFFE ID is still a CN.
        (f'Subject="CN={ADMIN}"', f"cn:{ADMIN}"),
        (f'Subject="CN=a,CN={ADMIN}"', None),  # several CNs: ambiguous
        ('Subject="CN=a+CN=b"', None),
        # A `,` or `;` inside quotes is literal, not a new element or pair.
        (f'Subject="CN=x,O=a;URI={ADMIN}";DNS=api.example', "api.example"),
        (f'Subject="O=y, URI={ADMIN}";Hash=1', None),
        # A Subject with a quoted RDN value (RFC 2253) and an escaped backslash.
        ('Subject="CN=\\"a,b\\",O=x"', "cn:a,b"),
        ('Subject="CN=a\\\\\\\\,O=x"', "cn:a\\"),
        # The URI key must be a SPIFFE ID, the DNS key a hostname, never `local`.
        (f"URI=cn:{ADMIN};DNS=api.example", "api.example"),
        ("DNS=local", None),
        (f"DNS={ADMIN}", None),
        # Malformed headers name nobody, even when a URI is readable.
        (f'Subject="O=x;URI={ADMIN}', None),  # unterminated quote
        (f'Subject="O=x"junk;URI={ADMIN}', None),  # text after a closing quote
        (f'Hash=a"b;URI={ADMIN}', None),  # a quote inside an unquoted value
        (f"Hash;URI={ADMIN}", None),  # a pair without `=`
        (f"URI={ADMIN};", None),  # an empty pair
        (f"URI={ADMIN},", None),  # an empty element
        (f",URI={ADMIN}", None),
        (f'Subject="CN=a\\q";URI={ADMIN}', ADMIN),  # the DN is not consulted when a URI is
        ('Subject="CN=a\\q"', None),  # a bad DN escape
        ('Subject="CN=a\\ff"', None),  # not UTF-8
        ('Subject="CN=#0403616263"', None),  # a hex-encoded value is not a name
    ],
)
def test_xfcc_attacks_name_nobody_else(header: str, identity: str | None) -> None:
    assert xfcc_identity(header) == identity


def test_xfcc_elements_follow_envoys_grammar() -> None:
    header = 'By=spiffe://a;Hash=h,By="q\\"uote";Subject="CN=x,O=y;z";URI=spiffe://b'
    assert xfcc_elements(header) == [
        [("BY", "spiffe://a"), ("HASH", "h")],
        [("BY", 'q"uote'), ("SUBJECT", "CN=x,O=y;z"), ("URI", "spiffe://b")],
    ]
    with pytest.raises(MalformedHeader):
        xfcc_elements('Subject="no end')


@pytest.mark.parametrize(
    ("dn", "attributes"),
    [
        ("CN=api,O=Example", [("CN", "api"), ("O", "Example")]),
        ("cn = api , o=Ex", [("CN", "api"), ("O", "Ex")]),
        ("O=a\\,CN=b", [("O", "a,CN=b")]),
        ("CN=caf\\C3\\A9+O=x;OU=y", [("CN", "café"), ("O", "x"), ("OU", "y")]),
        ('CN="a,b;c"', [("CN", "a,b;c")]),
        ("2.5.4.3=api", [("2.5.4.3", "api")]),
        ("CN=\\ lead\\ ", [("CN", " lead ")]),
        ("", []),
    ],
)
def test_dns_are_parsed_per_rfc_4514(dn: str, attributes: list[tuple[str, str]]) -> None:
    assert dn_attributes(dn) == attributes


@pytest.mark.parametrize("dn", ["CN=a\\", "CN", "=x", 'CN="open', "CN=a<b", "CN=a\\zz"])
def test_malformed_dns_are_refused(dn: str) -> None:
    with pytest.raises(MalformedHeader):
        dn_attributes(dn)


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


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-forwarded-client-cert", "By=spiffe://proxy;Hash=abc"),),
        (("x-forwarded-client-cert", 'Subject="O=x"junk'),),
        (),
    ],
    ids=["no-client-identity", "malformed", "no-header"],
)
def test_a_proxied_caller_never_inherits_the_proxys_identity(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    ident = Identifier(
        loopback_listener=True, trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")]
    )
    proxy_cert = {"peer_uri": [b"spiffe://cluster.local/ns/istio/sa/ingress"]}
    assert identify(ident, FakeContext("ipv4:127.0.0.1:5000", metadata, proxy_cert)) == (
        None,
        "xfcc",
    )
    assert identify(ident, FakeContext("ipv4:127.0.0.1:5000", metadata)) == (None, "xfcc")


def test_repeated_xfcc_headers_are_one_list_and_the_last_element_counts() -> None:
    ident = Identifier(
        loopback_listener=False, trusted_proxies=[ipaddress.ip_network("10.0.0.0/8")]
    )
    metadata = (
        ("x-forwarded-client-cert", f"URI={ADMIN}"),
        ("x-forwarded-client-cert", f"URI={SPIFFE}"),
    )
    assert identify(ident, FakeContext("ipv4:10.1.2.3:5000", metadata)) == (SPIFFE, "xfcc")


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
