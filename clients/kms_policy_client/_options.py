"""Client options and the channel they build: deadlines, retries, keepalive, TLS."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["DEFAULT_TARGET", "DEFAULT_TIMEOUT_SECONDS", "ClientOptions", "TLSConfig"]

DEFAULT_TARGET = "127.0.0.1:50051"  # the sidecar
DEFAULT_TIMEOUT_SECONDS = 10.0
SERVICE = "kmspolicy.v1.PolicyService"


@dataclass(frozen=True)
class TLSConfig:
    """Trust `ca_file` (system roots if None); present `cert_file`/`key_file` for mTLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # override the name checked in the server certificate

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


@dataclass(frozen=True)
class ClientOptions:
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # default deadline of each call, seconds
    max_attempts: int = 4  # gRPC retries of UNAVAILABLE only (every RPC is idempotent)
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    keepalive_time: float = 60.0  # seconds between pings on a long-lived (sidecar) channel
    keepalive_timeout: float = 20.0
    tls: TLSConfig | None = None

    def service_config(self) -> str:
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": SERVICE}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff}s",
                            "maxBackoff": f"{self.max_backoff}s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.service_config()),
            ("grpc.keepalive_time_ms", int(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options
