"""Who is calling: from the client certificate, a trusted proxy's XFCC header, or `local`.

Identities live in disjoint namespaces, so no kind of name can pose as another:

- a SPIFFE ID (`spiffe://...`), from a URI SAN;
- a DNS name (hostname syntax: no `:` or `/`, never `local`), from a DNS SAN;
- `cn:<common name>`, from the subject CN when the certificate has neither; a CN
  reading `spiffe://...` is therefore `cn:spiffe://...` and matches no SPIFFE rule;
- `local`, the pod itself on a loopback listener.

With mTLS the first SPIFFE URI SAN wins, else the first DNS SAN, else the CN. When
the direct peer is in a `--trusted-proxy` range it is a proxy: the caller is named
by the last element of its `x-forwarded-client-cert` header (Envoy/Istio) or by
nothing at all, never by the proxy's own certificate or `local`. Otherwise the
caller is unidentified (None).
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

LOCAL = "local"
CN_PREFIX = "cn:"
XFCC = "x-forwarded-client-cert"
SPIFFE_SCHEME = "spiffe://"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A hostname (an optional leading wildcard label, then dot-separated labels). Constant
# and unambiguous: the labels are separated by a character they cannot contain.
_DNS_NAME = re.compile(r"(?:\*\.)?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")
_MAX_DNS_NAME = 253
# XFCC keys and DN attribute types: letters, digits, `-`, `.` (numeric OIDs), `_`.
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
_OWS = " \t"


@dataclass(frozen=True)
class Caller:
    identity: str | None  # None: nobody we can name
    peer: str  # the direct peer, e.g. ipv4:10.0.0.7:51234
    source: str  # "mtls", "xfcc", "local" or "none"

    @property
    def rate_key(self) -> str:
        """What the per-caller rate bucket is keyed by."""
        return self.identity or peer_host(self.peer)


def peer_host(peer: str) -> str:
    """ipv4:1.2.3.4:5678 -> 1.2.3.4; ipv6:[::1]:5678 -> ::1."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


# -- the identity namespaces ---------------------------------------------------


def spiffe_id(value: str) -> str | None:
    """`value` if it is a SPIFFE ID (a trust domain, printable ASCII, no spaces)."""
    if (
        value.startswith(SPIFFE_SCHEME)
        and len(value) > len(SPIFFE_SCHEME)
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        return value
    return None


def dns_identity(value: str) -> str | None:
    """`value` if it is a hostname other than `local` (which names the pod itself)."""
    if len(value) <= _MAX_DNS_NAME and _DNS_NAME.fullmatch(value) and value.lower() != LOCAL:
        return value
    return None


def cn_identity(common_name: str) -> str | None:
    return CN_PREFIX + common_name if common_name else None


def certificate_identity(auth: dict[str, list[bytes]]) -> str | None:
    """From gRPC's auth context: the first SPIFFE URI SAN, else DNS SAN, else `cn:<CN>`."""

    def texts(name: str) -> list[str]:
        return [value.decode(errors="replace") for value in auth.get(name, [])]

    for uri in texts("peer_uri"):
        if found := spiffe_id(uri):
            return found
    for name in texts("peer_dns"):
        if found := dns_identity(name):
            return found
    for common_name in texts("x509_common_name"):
        if found := cn_identity(common_name):
            return found
    return None


# -- x-forwarded-client-cert -----------------------------------------------------


class MalformedHeader(ValueError):
    """The XFCC header (or a DN in it) does not follow the grammar; it names nobody."""


def xfcc_elements(header: str) -> list[list[tuple[str, str]]]:
    """Parse XFCC per Envoy's grammar into elements of (KEY, value) pairs, keys upper-cased.

    Elements are separated by `,`, pairs by `;`, key and value by the first `=`. A value
    may be double-quoted; inside quotes `,`, `;` and `=` are literal, `\\"` is a quote
    and `\\\\` a backslash (any other backslash is kept, for the DN layer). Anything else
    (an unterminated quote, text after a closing quote, a quote inside an unquoted
    value, a pair without `=`, an empty element) raises MalformedHeader.
    """
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    i, end = 0, len(header)
    while True:
        while i < end and header[i] in _OWS:
            i += 1
        start = i
        while i < end and header[i] in _TOKEN:
            i += 1
        key = header[start:i]
        if not key or i >= end or header[i] != "=":
            raise MalformedHeader(f"expected key= at offset {start}")
        i += 1
        if i < end and header[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= end:
                    raise MalformedHeader("unterminated quoted value")
                ch = header[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < end and header[i + 1] in '"\\':
                    chars.append(header[i + 1])
                    i += 2
                    continue
                chars.append(ch)
                i += 1
            value = "".join(chars)
            while i < end and header[i] in _OWS:
                i += 1
        else:
            start = i
            while i < end and header[i] not in ",;":
                if header[i] == '"':
                    raise MalformedHeader(f"quote inside an unquoted value at offset {i}")
                i += 1
            value = header[start:i].strip(_OWS)
        pairs.append((key.upper(), value))
        if i >= end:
            elements.append(pairs)
            return elements
        if header[i] == ",":
            elements.append(pairs)
            pairs = []
        elif header[i] != ";":
            raise MalformedHeader(f"expected ; or , at offset {i}")
        i += 1


_DN_SPECIAL = frozenset(' "#+,;<=>\\')
_HEX = frozenset("0123456789abcdefABCDEF")


def dn_attributes(dn: str) -> list[tuple[str, str]]:
    """Parse an RFC 4514 (RFC 2253) distinguished name into (TYPE, value) pairs.

    RDNs are separated by `,` (or `;`), multi-valued RDNs by `+`; values may escape a
    special character (`\\,`) or a byte (`\\2C`), or be double-quoted. A `#` hex
    value is kept as written. Raises MalformedHeader on anything else.
    """
    attributes: list[tuple[str, str]] = []
    if not dn.strip(_OWS):
        return attributes
    i, end = 0, len(dn)
    while True:
        while i < end and dn[i] in _OWS:
            i += 1
        start = i
        while i < end and dn[i] in _TOKEN:
            i += 1
        kind = dn[start:i].strip()
        while i < end and dn[i] in _OWS:
            i += 1
        if not kind or i >= end or dn[i] != "=":
            raise MalformedHeader(f"expected type= in the DN at offset {start}")
        i += 1
        while i < end and dn[i] in _OWS:
            i += 1
        raw = bytearray()
        if i < end and dn[i] == '"':  # RFC 2253 quoted value
            i += 1
            while True:
                if i >= end:
                    raise MalformedHeader("unterminated quoted value in the DN")
                ch = dn[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    i = _dn_escape(dn, i, raw)
                    continue
                raw += ch.encode()
                i += 1
            while i < end and dn[i] in _OWS:
                i += 1
        else:
            trailing = 0  # unescaped spaces at the end of a value are not part of it
            while i < end and dn[i] not in ",;+":
                ch = dn[i]
                if ch == "\\":
                    i = _dn_escape(dn, i, raw)
                    trailing = 0
                    continue
                if ch in '"<>':
                    raise MalformedHeader(f"unescaped {ch!r} in the DN at offset {i}")
                raw += ch.encode()
                trailing = trailing + 1 if ch == " " else 0
                i += 1
            if trailing:
                del raw[-trailing:]
        try:
            value = raw.decode()
        except UnicodeDecodeError as exc:
            raise MalformedHeader("a DN value is not UTF-8") from exc
        attributes.append((kind.upper(), value))
        if i >= end:
            return attributes
        i += 1  # past , ; or +


def _dn_escape(dn: str, i: int, raw: bytearray) -> int:
    """Decode the escape at dn[i] (a backslash) into raw; return the next offset."""
    if i + 2 < len(dn) and dn[i + 1] in _HEX and dn[i + 2] in _HEX:
        raw.append(int(dn[i + 1 : i + 3], 16))
        return i + 3
    if i + 1 < len(dn) and dn[i + 1] in _DN_SPECIAL:
        raw += dn[i + 1].encode()
        return i + 2
    raise MalformedHeader(f"bad escape in the DN at offset {i}")


def _subject_cn(subject: str) -> str | None:
    """The one CN of a DN; none, several or a hex-encoded one names nobody."""
    common_names = [value for kind, value in dn_attributes(subject) if kind in ("CN", "2.5.4.3")]
    if len(common_names) != 1 or common_names[0].startswith("#"):
        return None
    return common_names[0] or None


def xfcc_identity(header: str) -> str | None:
    """The identity in the element the nearest proxy appended (the last one): its first
    SPIFFE `URI`, else its first `DNS`, else `cn:` + the CN of its `Subject`. A
    malformed header names nobody."""
    try:
        elements = xfcc_elements(header)
        if not elements:
            return None
        last = elements[-1]
        for key, value in last:
            if key == "URI" and (found := spiffe_id(value)):
                return found
        for key, value in last:
            if key == "DNS" and (found := dns_identity(value)):
                return found
        for key, value in last:
            if key == "SUBJECT":
                return cn_identity(_subject_cn(value) or "")
    except MalformedHeader:
        return None
    return None


# The caller of the RPC this task serves, once admission has identified it: the RPC
# frame reads it instead of parsing certificates and headers a second time.
CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "kms_policy_caller", default=None
)


class Identifier:
    def __init__(
        self, *, loopback_listener: bool, trusted_proxies: Sequence[Network], tls: bool = True
    ) -> None:
        self._loopback = loopback_listener
        self._trusted = tuple(trusted_proxies)
        self._tls = tls

    def _trusted_peer(self, peer: str) -> bool:
        if not self._trusted:
            return False
        try:
            address = ipaddress.ip_address(peer_host(peer))
        except ValueError:
            return False
        return any(address in net for net in self._trusted)

    def identify(self, context: grpc.aio.ServicerContext) -> Caller:
        peer = context.peer() or ""
        if self._trusted_peer(peer):
            # A proxy speaks for its client or for nobody: its own certificate (or
            # `local`) must never become the identity of a client it could not name.
            header = _xfcc_header(context.invocation_metadata())
            return Caller(xfcc_identity(header) if header else None, peer, "xfcc")
        if self._tls:  # without TLS there is no certificate to read
            identity = certificate_identity(context.auth_context() or {})
            if identity:
                return Caller(identity, peer, "mtls")
        if self._loopback:
            return Caller(LOCAL, peer, "local")
        return Caller(None, peer, "none")


def _xfcc_header(items: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """Every XFCC header, joined as HTTP joins repeated fields (the last element is last)."""
    values = [v for k, v in items or () if k == XFCC and isinstance(v, str)]
    return ",".join(values) if values else None
