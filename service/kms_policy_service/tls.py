"""TLS and mutual TLS for the gRPC listener, re-reading the files when they change.

cert-manager and SPIFFE agents rotate certificates in place; gRPC asks for the
configuration at every handshake, and we hand it a new one only when a file's
modification time or size changed, so rotation needs no restart.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = [p for p in (cert, key, client_ca) if p is not None]
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._stamp = self._stat()

    def _stat(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in self._paths:
            st = os.stat(p)
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """Read the files now (raises OSError if unreadable)."""
        return grpc.ssl_server_certificate_configuration(
            [(self._key.read_bytes(), self._cert.read_bytes())],
            root_certificates=self._client_ca.read_bytes() if self._client_ca else None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake callback: a new configuration if the files changed, else None."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            config = self.configuration()
        except (OSError, ValueError) as exc:
            # Mid-rotation (one file written, the other not yet): keep serving the old pair.
            log.warning("TLS files unreadable, keeping the current certificate: %s", exc)
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra={"tls_cert": str(self._cert)})
        return config


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None
) -> tuple[grpc.ServerCredentials, CertificateFiles]:
    """Credentials that require a client certificate from `client_ca` when it is given."""
    files = CertificateFiles(cert, key, client_ca)
    credentials = grpc.dynamic_ssl_server_credentials(
        files.configuration(), files.fetch, require_client_authentication=client_ca is not None
    )
    return credentials, files
