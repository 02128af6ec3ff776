"""ListKeyPolicies page tokens through the real server: a forged token's marker is held to
KMS's own constraints before any KMS call, and KMS refusing a marker is the caller's
INVALID_PAGE_TOKEN, never INTERNAL."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kms_policy_service.validation.page_tokens import encode_page_token
from kmspolicy.v1 import policy_service_pb2 as pb
from tests.conftest import RunningService
from tests.support.kms_faults import KmsFaultInjector, Rule
from tests.support.status import details_of

# Outside botocore's KMS MarkerType (1 to 1024 characters, [\u0020-\u00FF]*).
BAD_MARKERS = {
    "2018 chars": "m" * 2018,
    "40000 chars": "m" * 40_000,
    "NUL": "abc\x00def",
    "lone surrogate": "abc\ud800",
    "above U+00FF": "abc\u0100",
    "empty": "",
}


async def test_a_forged_token_with_a_marker_kms_would_refuse_never_reaches_kms(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    for name, marker in BAD_MARKERS.items():
        token = encode_page_token(key["Arn"], marker)  # the format is public: forgeable
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.stub.ListKeyPolicies(
                pb.ListKeyPoliciesRequest(key_id=key["Arn"], page_token=token), timeout=10
            )
        details = details_of(caught.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_PAGE_TOKEN",
        ), name
        assert details.bad_request is not None
        assert [v.field for v in details.bad_request.field_violations] == ["page_token"], name
    assert faults.requests("ListKeyPolicies") == []
    assert "ListKeyPolicies" not in faults.kms_operations()


async def test_a_forged_marker_within_kms_constraints_is_passed_to_kms(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    marker = "\u00ff" + "m" * 1022 + " "  # 1024 characters, all in U+0020..U+00FF
    reply = await service.stub.ListKeyPolicies(
        pb.ListKeyPoliciesRequest(
            key_id=key["Arn"], page_token=encode_page_token(key["Arn"], marker)
        ),
        timeout=10,
    )
    assert list(reply.policy_names) == ["default"]  # moto ignores Marker
    assert [seen.body.get("Marker") for seen in faults.requests("ListKeyPolicies")] == [marker]


async def test_kms_refusing_the_marker_is_invalid_page_token_not_internal(
    service: RunningService, faults: KmsFaultInjector, key: dict[str, Any]
) -> None:
    faults.add(
        Rule(
            "ListKeyPolicies",
            "error",
            error_code="InvalidMarkerException",
            status=400,
            message="The request was rejected because the marker is not valid.",
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.ListKeyPolicies(
            pb.ListKeyPoliciesRequest(
                key_id=key["Arn"], page_token=encode_page_token(key["Arn"], "expired-marker")
            ),
            timeout=10,
        )
    details = details_of(caught.value)
    assert (details.code, details.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    assert details.error_info.metadata["kmsErrorCode"] == "InvalidMarkerException"
    assert len(faults.requests("ListKeyPolicies")) == 1  # the caller's to fix: not retried
