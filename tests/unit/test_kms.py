"""botocore failures become KmsFailure codes that the error table knows."""

from __future__ import annotations

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
