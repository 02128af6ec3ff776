"""botocore failures become KmsFailure codes that the error table knows."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from kms_policy_service import errors
from kms_policy_service.backend import KmsFailure
from kms_policy_service.kms import ClientConfig, _translate, client_config


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (NoCredentialsError(), errors.CREDENTIALS_MISSING),
        (EndpointConnectionError(endpoint_url="http://x"), errors.CONNECTION_ERROR),
        (ConnectionClosedError(endpoint_url="http://x"), errors.CONNECTION_ERROR),
        (ConnectTimeoutError(endpoint_url="http://x"), errors.READ_TIMEOUT),
        (ReadTimeoutError(endpoint_url="http://x"), errors.READ_TIMEOUT),
        (ConnectionResetError(), errors.CONNECTION_ERROR),
        (
            ClientError(
                {
                    "Error": {"Code": "NotFoundException", "Message": "m"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "GetKeyPolicy",
            ),
            "NotFoundException",
        ),
    ],
)
def test_botocore_failures_translate(exc: Exception, code: str) -> None:
    with pytest.raises(KmsFailure) as caught, _translate():
        raise exc
    assert caught.value.code == code
    assert caught.value.__cause__ is exc


def test_a_client_error_without_a_code_keeps_the_http_status() -> None:
    exc = ClientError({"Error": {}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetKeyPolicy")
    with pytest.raises(KmsFailure) as caught, _translate():
        raise exc
    assert (caught.value.code, caught.value.http_status) == ("HTTP503", 503)
    assert errors.kms_rule(caught.value.code, "GetKeyPolicy", 503).error is errors.Unavailable


def test_client_config_owns_retries_and_bounds_timeouts() -> None:
    config = client_config(ClientConfig(region="us-east-1", regions=frozenset({"us-east-1"})))
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.connect_timeout == 2.0 and config.read_timeout == 5.0
    assert config.max_pool_connections == 64
    assert config.user_agent_appid.startswith("kms-policy-service/")


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[str, list[str]]]:
    """A local HTTP endpoint answering every call with `{"Policy": "{}"}`; the User-Agents seen."""
    import json

    from aiohttp import web

    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers["User-Agent"])
        return web.Response(
            text=json.dumps({"Policy": "{}"}), content_type="application/x-amz-json-1.1"
        )

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def kms_client(session: Any, url: str, config: Any, region: str = "us-east-1", **kw: Any) -> Any:
    """A KMS client of `session` on the local endpoint, with dummy credentials."""
    return session.create_client(
        "kms",
        region_name=region,
        endpoint_url=url,
        config=config,
        aws_access_key_id="a",
        aws_secret_access_key="b",
        **kw,
    )


async def test_a_lightened_client_sends_the_same_user_agent_built_once(
    endpoint: tuple[str, list[str]],
) -> None:
    from aiobotocore.session import get_session

    from kms_policy_service.kms import _lighten

    url, seen = endpoint
    config = client_config(ClientConfig(region="us-east-1", regions=frozenset()))
    async with kms_client(get_session(), url, config) as client:
        await client.get_key_policy(KeyId="k", PolicyName="default")
        creator = client._user_agent_creator
        builds = 0
        original = creator.to_string

        def counted() -> str:
            nonlocal builds
            builds += 1
            return str(original())

        creator.to_string = counted
        _lighten(client)
        for _ in range(3):
            await client.get_key_policy(KeyId="k", PolicyName="default")
    assert len(set(seen)) == 1 and "app/kms-policy-service" in seen[0]
    assert builds == 1  # botocore alone builds it twice per request


def _tls_context(client: Any) -> Any:
    sessions = client._endpoint.http_session._sessions
    return next(iter(sessions.values())).connector._ssl


async def test_clients_share_one_tls_context_unless_they_present_a_certificate(
    endpoint: tuple[str, list[str]], tmp_path: Path
) -> None:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession, get_session

    from tests.support.certs import CertAuthority

    url, _ = endpoint
    config = client_config(ClientConfig(region="us-east-1", regions=frozenset()))
    cert, key = CertAuthority().issue("kms-policy-service").write(tmp_path, "client")
    with_cert = config.merge(AioConfig(client_cert=(str(cert), str(key))))
    contexts = []
    for session, region, cfg in (
        (get_session(), "us-east-1", config),
        (get_session(), "eu-west-1", config),
        (AioSession(), "us-east-1", config),  # as a member account's session is
        (get_session(), "us-east-1", with_cert),
    ):
        async with kms_client(session, url, cfg, region) as client:
            await client.get_key_policy(KeyId="k", PolicyName="default")
            contexts.append(_tls_context(client))
    assert contexts[0] is contexts[1] is contexts[2]  # built once: ~0.7 MB and ~13 ms each
    assert contexts[3] is not contexts[0]  # a client certificate is the client's own


async def test_clients_that_verify_differently_never_share_a_tls_context(
    endpoint: tuple[str, list[str]], tmp_path: Path
) -> None:
    import ssl

    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    from tests.support.certs import CertAuthority

    url, _ = endpoint
    config = client_config(ClientConfig(region="us-east-1", regions=frozenset()))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(CertAuthority().pem)

    async def context_of(verify: object, cfg: Any = config) -> Any:
        async with kms_client(get_session(), url, cfg, verify=verify) as client:
            # Through the proxy nothing answers; its context is made before that.
            with contextlib.suppress(Exception):
                await client.get_key_policy(KeyId="k", PolicyName="default")
            return _tls_context(client)

    unverified = await context_of(False)  # made first: it must not become the others'
    verified = await context_of(None)
    assert unverified is not verified
    assert (unverified.verify_mode, unverified.check_hostname) == (ssl.CERT_NONE, False)
    assert (verified.verify_mode, verified.check_hostname) == (ssl.CERT_REQUIRED, True)
    pinned = await context_of(str(bundle))
    assert pinned is not verified and len(pinned.get_ca_certs()) == 1
    assert await context_of(str(bundle)) is pinned
    bundle.write_bytes(CertAuthority().pem + CertAuthority().pem)  # rotated in place
    rotated = await context_of(str(bundle))
    assert rotated is not pinned and len(rotated.get_ca_certs()) == 2
    proxied = config.merge(AioConfig(proxies={"http": "http://127.0.0.1:9"}))
    assert await context_of(None, proxied) is not verified  # a proxy's client builds its own


async def test_slimmed_models_keep_kms_and_sts_endpoints_and_operations() -> None:
    from aiobotocore.session import AioSession

    from kms_policy_service.kms import _slim_models

    session = AioSession()
    _slim_models(session)
    endpoints = session.get_component("data_loader").load_data("endpoints")
    assert all(set(p["services"]) <= {"kms", "sts"} for p in endpoints["partitions"])
    model = session.get_component("data_loader").load_service_model("kms", "service-2")
    assert "documentation" not in model["operations"]["PutKeyPolicy"]
    urls = {}
    for service, region in (("kms", "us-east-1"), ("kms", "cn-north-1"), ("sts", "eu-west-1")):
        async with session.create_client(
            service, region_name=region, aws_access_key_id="a", aws_secret_access_key="b"
        ) as client:
            urls[(service, region)] = client.meta.endpoint_url
            assert hasattr(client, "put_key_policy" if service == "kms" else "assume_role")
    assert urls == {
        ("kms", "us-east-1"): "https://kms.us-east-1.amazonaws.com",
        ("kms", "cn-north-1"): "https://kms.cn-north-1.amazonaws.com.cn",
        ("sts", "eu-west-1"): "https://sts.eu-west-1.amazonaws.com",
    }


async def test_written_sdk_data_is_what_the_sdk_loads_and_resolves_the_same_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore
    from aiobotocore.session import AioSession

    from kms_policy_service.kms import SDK_DATA_MARKER, write_sdk_data

    write_sdk_data(tmp_path)
    assert json.loads((tmp_path / SDK_DATA_MARKER).read_text()) == {
        "botocore": botocore.__version__
    }
    assert (tmp_path / "endpoints.json").stat().st_size < 100_000  # botocore's: 1.3 MB
    urls = {}
    for data_path in ("", str(tmp_path)):
        if data_path:
            monkeypatch.setenv("AWS_DATA_PATH", data_path)
        else:
            monkeypatch.delenv("AWS_DATA_PATH", raising=False)
        session = AioSession()
        loader = session.get_component("data_loader")
        _, path = loader.load_data_with_path("endpoints")
        assert path.startswith(str(tmp_path)) == bool(data_path)
        for service, region in (("kms", "us-east-1"), ("kms", "cn-north-1"), ("sts", "eu-west-1")):
            async with session.create_client(
                service, region_name=region, aws_access_key_id="a", aws_secret_access_key="b"
            ) as client:
                urls[(data_path, service, region)] = client.meta.endpoint_url
                assert hasattr(client, "put_key_policy" if service == "kms" else "assume_role")
    assert {k[1:]: v for k, v in urls.items() if k[0]} == {
        k[1:]: v for k, v in urls.items() if not k[0]
    }


def test_sdk_data_from_another_botocore_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from kms_policy_service.kms import SDK_DATA_MARKER, _check_sdk_data

    (tmp_path / SDK_DATA_MARKER).write_text('{"botocore": "0.0.1"}')
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    _check_sdk_data()
    assert "written by botocore 0.0.1" in caplog.text
