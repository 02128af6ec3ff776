"""Every row of the error table, through the real server and aiobotocore's real parsing path.

The fault injector answers in the KMS JSON protocol (or drops, stalls, or serves HTML).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService, policy_for
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of
from tests.support.waiting import until

GET = "GetKeyPolicy"
PUT = "PutKeyPolicy"


async def call(
    service: RunningService, operation: str, key: dict[str, Any], timeout: float = 10
) -> None:
    if operation == PUT:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id=key["Arn"], policy=policy_for()), timeout=timeout
        )
    else:
        await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]), timeout=timeout)


@pytest.mark.parametrize(
    ("operation", "rule", "code", "reason", "attempts", "retry_info"),
    [
        (
            PUT,
            Rule(PUT, "error", "InvalidArnException"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_INVALID_ARN",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "MalformedPolicyDocumentException"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_MALFORMED_POLICY",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "ValidationException"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "LimitExceededException"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "POLICY_TOO_LARGE",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "LimitExceededException"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "KMS_LIMIT_EXCEEDED",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "NotFoundException", message="Key does not exist"),
            grpc.StatusCode.NOT_FOUND,
            "KEY_NOT_FOUND",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "KMSInvalidStateException", status=409),
            grpc.StatusCode.FAILED_PRECONDITION,
            "KMS_INVALID_STATE",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "UnsupportedOperationException"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "KMS_UNSUPPORTED_OPERATION",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "AccessDeniedException"),
            grpc.StatusCode.PERMISSION_DENIED,
            "KMS_ACCESS_DENIED",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "ThrottlingException"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "KMS_THROTTLED",
            3,
            True,
        ),
        (
            PUT,
            Rule(PUT, "error", "ThrottlingException"),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "KMS_THROTTLED",
            3,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "DependencyTimeoutException", status=503),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            3,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "KMSInternalException", status=500),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            3,
            True,
        ),
        (GET, Rule(GET, "html500"), grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", 3, True),
        (GET, Rule(GET, "drop"), grpc.StatusCode.UNAVAILABLE, "KMS_UNAVAILABLE", 3, True),
        (
            GET,
            Rule(GET, "error", "UnrecognizedClientException"),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "ExpiredTokenException"),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "InvalidSignatureException"),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "RequestExpired", status=400),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CLOCK_SKEW",
            1,
            True,
        ),
        (
            PUT,
            Rule(PUT, "error", "OptInRequired", status=403),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_OPT_IN_REQUIRED",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "InvalidAction", status=400),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_ENDPOINT_MISCONFIGURED",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "UnknownOperationException", status=404),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_ENDPOINT_MISCONFIGURED",
            1,
            True,
        ),
        (
            PUT,
            Rule(PUT, "error", "NotAuthorized", status=400),
            grpc.StatusCode.PERMISSION_DENIED,
            "KMS_ACCESS_DENIED",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "ValidationError", status=400),
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            1,
            False,
        ),
        (
            PUT,
            Rule(PUT, "error", "InvalidParameterValue", status=400),
            grpc.StatusCode.INVALID_ARGUMENT,
            "KMS_VALIDATION",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "MissingParameter", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "InvalidParameterCombination", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "MissingAction", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "InvalidQueryParameter", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "MalformedQueryString", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "MalformedHttpRequestException", status=400),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
        (
            GET,
            Rule(GET, "error", "RequestTimeoutException", status=408),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_UNAVAILABLE",
            3,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "IncompleteSignature", status=400),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "IncompleteSignatureException", status=400),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "InvalidClientTokenId", status=403),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "MissingAuthenticationToken", status=403),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "MissingAuthenticationTokenException", status=403),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "ExpiredToken", status=400),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "SignatureDoesNotMatch", status=403),
            grpc.StatusCode.UNAVAILABLE,
            "KMS_CREDENTIALS",
            1,
            True,
        ),
        (
            GET,
            Rule(GET, "error", "BrandNewException"),
            grpc.StatusCode.INTERNAL,
            "INTERNAL",
            1,
            False,
        ),
    ],
    ids=lambda v: v.error_code or v.action if isinstance(v, Rule) else None,
)
async def test_kms_failure_maps_to_status(
    service: RunningService,
    faults: KmsFaultInjector,
    key: dict[str, Any],
    operation: str,
    rule: Rule,
    code: grpc.StatusCode,
    reason: str,
    attempts: int,
    retry_info: bool,
) -> None:
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))  # resolve first
    faults.clear()
    faults.add(rule)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(service, operation, key)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (code, reason)
    assert details.error_info_count == 1
    assert details.error_info.domain == "kmspolicy.v1"
    assert details.error_info.metadata["requestId"]
    assert (details.retry_info is not None) == retry_info
    assert faults.operations().count(operation) == attempts
    assert "Traceback" not in details.message and "testing" not in details.message
    if code == grpc.StatusCode.INTERNAL:
        assert (
            details.message
            == f"internal error (request id {details.error_info.metadata['requestId']})"
        )
    else:
        assert details.error_info.metadata["kmsErrorCode"]


async def test_a_transient_failure_is_retried_to_success(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(Rule(GET, "error", "ThrottlingException", times=1))
    faults.add(Rule(GET, "error", "KMSInternalException", status=500, times=1))
    reply = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    assert reply.key_arn == key["Arn"]
    assert faults.operations().count(GET) == 3


async def test_a_slow_kms_ends_in_deadline_exceeded_not_after_kms_answers(
    faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    from kms_policy_service import Server
    from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
    from tests.conftest import service_settings

    server = Server(service_settings(faults.url, default_deadline=0.5))
    await server.startup()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.PolicyServiceStub(channel)
            await stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
            faults.add(Rule(GET, "sleep", delay=10.0))
            # No caller deadline: only the service's own (default_deadline) can end the call,
            # and long before KMS would answer.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(
                    stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"])), timeout=5
                )
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert details.error_info.metadata["kmsOperation"] == GET
        await until(
            lambda: any(s.injected == "sleep" and s.abandoned for s in faults.seen),
            timeout=5,
            what="the KMS request abandoned",
        )
    finally:
        await server.shutdown()


async def test_an_aws_managed_key_is_readable_but_never_writable(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    managed = {"KeyId": key["KeyId"], "Arn": key["Arn"], "KeyManager": "AWS", "KeyState": "Enabled"}
    faults.add(Rule("DescribeKey", "reply", body={"KeyMetadata": managed}))
    reply = await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id="alias/aws/ebs"))
    assert reply.key_arn == key["Arn"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(key_id="alias/aws/ebs", policy=policy_for())
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "AWS_MANAGED_KEY",
    )
    assert details.precondition_failure is not None
    assert PUT not in faults.operations()


COMMON_ERRORS = [
    # (code, HTTP status as the Common Errors page gives it, gRPC code, reason)
    ("IncompleteSignature", 400, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("InvalidClientTokenId", 403, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("UnrecognizedClientException", 403, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("ExpiredTokenException", 403, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("MissingAuthenticationTokenException", 403, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("InvalidSignatureException", 400, grpc.StatusCode.UNAVAILABLE, "KMS_CREDENTIALS"),
    ("RequestExpired", 400, grpc.StatusCode.UNAVAILABLE, "KMS_CLOCK_SKEW"),
    ("OptInRequired", 403, grpc.StatusCode.UNAVAILABLE, "KMS_OPT_IN_REQUIRED"),
    ("NotAuthorized", 400, grpc.StatusCode.PERMISSION_DENIED, "KMS_ACCESS_DENIED"),
    ("AccessDeniedException", 400, grpc.StatusCode.PERMISSION_DENIED, "KMS_ACCESS_DENIED"),
]


@pytest.mark.parametrize(("error_code", "status", "code", "reason"), COMMON_ERRORS)
@pytest.mark.parametrize("shape", ["header", "namespaced"])
async def test_a_common_error_is_recognised_however_aws_names_it(
    service: RunningService,
    faults: KmsFaultInjector,
    key: dict[str, Any],
    error_code: str,
    status: int,
    code: grpc.StatusCode,
    reason: str,
    shape: str,
) -> None:
    # AWS's front end may name the code only in X-Amzn-ErrorType (botocore then reports
    # the HTTP status as the code), or in `__type` with a namespace prefix.
    await service.stub.GetKeyPolicy(pb.GetKeyPolicyRequest(key_id=key["Arn"]))
    faults.clear()
    if shape == "header":
        faults.add(Rule(GET, "error", error_code, status=status, code_in_header=True))
    else:
        faults.add(Rule(GET, "error", f"com.amazon.coral.service#{error_code}", status=status))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(service, GET, key)
    details = details_of(caught.value)
    assert (details.code, details.reason) == (code, reason)
    assert details.error_info.metadata["kmsErrorCode"] == error_code
    assert "injected" not in details.message  # our own sentence: KMS's could name the role
    assert faults.operations().count(GET) == 1
