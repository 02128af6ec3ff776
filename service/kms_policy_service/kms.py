"""The aiobotocore KMS backend: the only module that imports aiobotocore or botocore.

One client per Region (the home Region plus any allow-listed ones) and one STS
client, created at start and closed at shutdown; botocore failures become
backend.KmsFailure with KMS's error code or one of errors' transport pseudo-codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from kms_policy_service._version import __version__
from kms_policy_service.backend import CallerIdentity, KeyMetadata, KmsFailure, PolicyPage
from kms_policy_service.errors import CONNECTION_ERROR, CREDENTIALS_MISSING, READ_TIMEOUT


@contextmanager
def _translate() -> Iterator[None]:
    """Turn every botocore/aiohttp failure into a KmsFailure (raise ... from exc)."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = error.get("Code") or ""
        if not code or code == str(status):
            code = _header_error_code(meta.get("HTTPHeaders", {})) or code
        code = code or (f"HTTP{status}" if status else "Unknown")
        raise KmsFailure(code, error.get("Message", ""), http_status=status) from exc
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        raise KmsFailure(READ_TIMEOUT, type(exc).__name__) from exc
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as exc:
        raise KmsFailure(CREDENTIALS_MISSING, type(exc).__name__) from exc
    except (BotoCoreError, aiohttp.ClientError, OSError) as exc:
        # Endpoint unreachable, connection reset or dropped mid-response.
        raise KmsFailure(CONNECTION_ERROR, type(exc).__name__) from exc


def _header_error_code(headers: Mapping[str, Any]) -> str:
    """The code in X-Amzn-ErrorType (`Code:namespace`), or "".

    botocore reads the JSON protocol's code only from the body's `__type`; without
    one it reports the HTTP status as the code. AWS's front end names some refusals
    it makes itself (signature, credentials, clock) in this header alone.
    """
    for name, value in headers.items():
        if name.lower() == "x-amzn-errortype":
            return str(value).split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return ""


@dataclass(frozen=True)
class ClientConfig:
    """What the KMS and STS clients need to know (built from Settings by the lifecycle)."""

    region: str
    regions: frozenset[str]  # every Region served: the home Region and the allowed ones
    kms_endpoint_url: str | None = None  # None: the AWS SDK's own resolution
    sts_endpoint_url: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_pool_connections: int = 64


def client_config(settings: ClientConfig) -> AioConfig:
    # The service owns its retry loop (deadlines, rate-limit tokens): botocore makes
    # exactly one attempt. Timeouts far below botocore's 60 s defaults.
    return AioConfig(
        retries={"mode": "standard", "total_max_attempts": 1},
        # Names the service in CloudTrail's userAgent, so auditors can tell its calls apart.
        user_agent_appid=f"kms-policy-service/{__version__}",
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=settings.max_pool_connections,
    )


class AioKmsBackend:
    """KMS over HTTP through aiobotocore."""

    def __init__(self, clients: dict[str, Any], sts: Any) -> None:
        self._clients = clients
        self._sts = sts

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: ClientConfig,
        *,
        credentials: tuple[str, str] | None = None,
    ) -> AsyncIterator[AioKmsBackend]:
        """Create the clients; close them (and their connection pools) on exit.

        Without `credentials` the default AWS credential chain applies (env, profile,
        IRSA web identity, EKS Pod Identity, instance role); they are never logged.
        """
        session = get_session()
        config = client_config(settings)
        extra: dict[str, Any] = {}
        if credentials is not None:
            extra = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
        async with AsyncExitStack() as stack:
            clients: dict[str, Any] = {}
            for region in sorted({settings.region, *settings.regions}):
                clients[region] = await stack.enter_async_context(
                    session.create_client(
                        "kms",
                        region_name=region,
                        endpoint_url=settings.kms_endpoint_url,
                        config=config,
                        **extra,
                    )
                )
            sts = await stack.enter_async_context(
                session.create_client(
                    "sts",
                    region_name=settings.region,
                    endpoint_url=settings.sts_endpoint_url,
                    config=config,
                    **extra,
                )
            )
            yield cls(clients, sts)

    def _client(self, region: str) -> Any:
        return self._clients[region]

    async def describe_key(self, key_id: str, *, region: str) -> KeyMetadata:
        with _translate():
            response = await self._client(region).describe_key(KeyId=key_id)
        meta = response["KeyMetadata"]
        return KeyMetadata(
            arn=meta["Arn"],
            key_id=meta["KeyId"],
            key_manager=meta.get("KeyManager", "CUSTOMER"),
            key_state=meta.get("KeyState", ""),
        )

    async def get_key_policy(self, key_arn: str, policy_name: str, *, region: str) -> str:
        with _translate():
            response = await self._client(region).get_key_policy(
                KeyId=key_arn, PolicyName=policy_name
            )
        return str(response["Policy"])

    async def put_key_policy(
        self,
        key_arn: str,
        policy_name: str,
        policy: str,
        *,
        bypass_lockout_check: bool,
        region: str,
    ) -> None:
        with _translate():
            await self._client(region).put_key_policy(
                KeyId=key_arn,
                PolicyName=policy_name,  # always explicit: moto and older SDKs need it
                Policy=policy,
                BypassPolicyLockoutSafetyCheck=bypass_lockout_check,
            )

    async def list_key_policies(
        self, key_arn: str, *, limit: int | None, marker: str | None, region: str
    ) -> PolicyPage:
        params: dict[str, Any] = {"KeyId": key_arn}
        if limit:
            params["Limit"] = limit
        if marker:
            params["Marker"] = marker
        with _translate():
            response = await self._client(region).list_key_policies(**params)
        next_marker = response.get("NextMarker") if response.get("Truncated") else None
        return PolicyPage(tuple(response.get("PolicyNames", [])), next_marker)

    async def get_caller_identity(self) -> CallerIdentity:
        with _translate():
            response = await self._sts.get_caller_identity()
        return CallerIdentity(account=response["Account"], arn=response["Arn"])
