"""The embedded local KMS: moto's KMS and STS emulator on a free loopback port, with a demo key.

Needs the optional extra `kms-policy-service[local]`; production installs do not carry moto.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from kms_policy_service.backend import default_key_policy

DEMO_ALIAS = "alias/demo"
LOCAL_CREDENTIALS = ("testing", "testing")  # moto checks no signatures


@dataclass(frozen=True)
class DemoKey:
    arn: str
    key_id: str
    alias: str


class LocalKms:
    """Runs moto in a background thread; use as a context manager."""

    def __init__(self, region: str, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "--local-kms needs moto: pip install 'kms-policy-service[local]'"
            ) from exc
        for name in ("werkzeug", "moto"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self._region = region
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.endpoint_url = ""

    def __enter__(self) -> LocalKms:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop()

    def _call(self, service: str, target: str, body: dict[str, Any]) -> dict[str, Any]:
        # A plain JSON-protocol request: the emulator only needs the target and a
        # credential scope naming the Region.
        request = urllib.request.Request(
            self.endpoint_url + "/",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/x-amz-json-1.1",
                "X-Amz-Target": target,
                "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/"
                f"{self._region}/{service}/aws4_request, SignedHeaders=host, Signature=0",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        result = json.loads(text) if text else None
        return result if isinstance(result, dict) else {}

    def create_demo_key(self, account: str, alias: str = DEMO_ALIAS) -> DemoKey:
        meta = self._call(
            "kms",
            "TrentService.CreateKey",
            {"Description": "kms-policy-service demo key", "Policy": default_key_policy(account)},
        )["KeyMetadata"]
        self._call(
            "kms", "TrentService.CreateAlias", {"AliasName": alias, "TargetKeyId": meta["KeyId"]}
        )
        return DemoKey(arn=meta["Arn"], key_id=meta["KeyId"], alias=alias)
