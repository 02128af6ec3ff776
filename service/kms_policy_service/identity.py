"""Who is calling: from the client certificate, a trusted proxy's XFCC header, or `local`.

Order: with mTLS, the certificate's SPIFFE URI SAN, else its first DNS SAN, else
its CN. When the direct peer is in a `--trusted-proxy` range, the
`x-forwarded-client-cert` header (Envoy/Istio) is believed instead. On a loopback
listener every other caller is `local` (the pod itself, sidecar mode). Otherwise
the caller is unidentified (None).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

LOCAL = "local"
XFCC = "x-forwarded-client-cert"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _first(auth: dict[str, list[bytes]], name: str, prefix: str = "") -> str | None:
    for value in auth.get(name, []):
        text = value.decode(errors="replace")
        if text.startswith(prefix):
            return text
    return None


def certificate_identity(auth: dict[str, list[bytes]]) -> str | None:
    return (
        _first(auth, "peer_uri", "spiffe://")
        or _first(auth, "peer_dns")
        or _first(auth, "x509_common_name")
    )


def _xfcc_elements(header: str) -> list[dict[str, str]]:
    """Parse XFCC: comma-separated elements of ;-separated key=value pairs (quoted values)."""
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key, value, quoted, in_value = "", "", False, False
    for ch in header + ",":
        if quoted:
            if ch == '"':
                quoted = False
            else:
                value += ch
        elif ch == '"' and in_value:
            quoted = True
        elif ch == "=" and not in_value:
            in_value = True
        elif ch in ";,":
            if key.strip():
                name = key.strip().upper()
                # URI and DNS may repeat; the first of each wins
                current.setdefault(name, value.strip())
            key, value, in_value = "", "", False
            if ch == "," and current:
                elements.append(current)
                current = {}
        elif in_value:
            value += ch
        else:
            key += ch
    return elements


def xfcc_identity(header: str) -> str | None:
    """The identity in the element the nearest proxy appended (the last one)."""
    elements = _xfcc_elements(header)
    if not elements:
        return None
    last = elements[-1]
    if last.get("URI"):
        return last["URI"]
    if last.get("DNS"):
        return last["DNS"]
    subject = last.get("SUBJECT", "")
    for part in subject.split(","):
        name, _, value = part.partition("=")
        if name.strip().upper() == "CN" and value.strip():
            return value.strip()
    return None


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
        if self._trusted and self._trusted_peer(peer):
            header = _metadata(context.invocation_metadata(), XFCC)
            if header:
                identity = xfcc_identity(header)
                if identity:
                    return Caller(identity, peer, "xfcc")
        if self._tls:  # without TLS there is no certificate to read
            identity = certificate_identity(context.auth_context() or {})
            if identity:
                return Caller(identity, peer, "mtls")
        if self._loopback:
            return Caller(LOCAL, peer, "local")
        return Caller(None, peer, "none")


def _metadata(items: Iterable[tuple[str, str | bytes]] | None, name: str) -> str | None:
    for key, value in items or ():
        if key == name and isinstance(value, str):
            return value
    return None
