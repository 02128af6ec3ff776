"""Property-based: whatever callers send, the service answers a deliberate status, never
INTERNAL or UNKNOWN, and never crashes; valid generated policies pass."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmspolicy.v1 import policy_service_pb2 as pb
from kmspolicy.v1 import policy_service_pb2_grpc as pb_grpc
from tests.conftest import ACCOUNT, policy_for
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess, loopback_service

UNEXPECTED = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@pytest.fixture(scope="module")
def stub(_injector: KmsFaultInjector) -> Iterator[pb_grpc.PolicyServiceStub]:
    # Every example is a hostile request from one caller: the refusal budget would end
    # the run; it is tested on its own (test_admission.py).
    proc = ServiceProcess(
        [*loopback_service(on=_injector.url), "--caller-refusal-rate-limit", "off"]
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{proc.port}")
    try:
        yield pb_grpc.PolicyServiceStub(channel)
    finally:
        channel.close()
        proc.stop()
        assert proc.proc is not None and proc.proc.returncode == 0, proc.drain_logs()


@pytest.fixture(scope="module")
def real_key(kms: Any) -> str:
    arn: str = kms.create_key(Policy=policy_for())["KeyMetadata"]["Arn"]
    return arn


key_ids = st.one_of(
    st.text(max_size=60),
    st.uuids().map(str),
    st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,20}", fullmatch=True),
    st.from_regex(
        r"arn:aws:kms:(us-east-1|eu-west-1):(123456789012|111122223333):(key|alias)/[a-z0-9-]{1,40}",
        fullmatch=True,
    ),
)
policy_names = st.one_of(
    st.just(""), st.sampled_from(["default", "AWS_RAM", "x"]), st.text(max_size=10)
)
vocab = st.sampled_from(
    [
        "Version",
        "Statement",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
        "Sid",
        "AWS",
        "Service",
        "Id",
        "*",
        "kms:*",
        "Allow",
        "Deny",
        "2012-10-17",
    ]
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=12),
        vocab,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(vocab, st.text(max_size=6)), children, max_size=5),
    ),
    max_leaves=25,
)
policies = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.builds(lambda s: json.dumps({"Version": "2012-10-17", "Statement": s}), json_values),
)


def assert_deliberate(exc: grpc.RpcError) -> None:
    code = exc.code()  # type: ignore[attr-defined]
    assert code not in UNEXPECTED, exc


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key_id=key_ids, name=policy_names, policy=policies, bypass=st.booleans())
def test_put_never_answers_internal(
    stub: pb_grpc.PolicyServiceStub, key_id: str, name: str, policy: str, bypass: bool
) -> None:
    try:
        stub.PutKeyPolicy(
            pb.PutKeyPolicyRequest(
                key_id=key_id,
                policy_name=name,
                policy=policy,
                bypass_policy_lockout_safety_check=bypass,
                validate_only=True,
            ),
            timeout=10,
        )
    except grpc.RpcError as exc:
        assert_deliberate(exc)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key_id=key_ids, name=policy_names, policy=policies)
def test_get_list_and_validate_never_answer_internal(
    stub: pb_grpc.PolicyServiceStub, key_id: str, name: str, policy: str
) -> None:
    for call in (
        lambda: stub.GetKeyPolicy(
            pb.GetKeyPolicyRequest(key_id=key_id, policy_name=name), timeout=10
        ),
        lambda: stub.ListKeyPolicies(
            pb.ListKeyPoliciesRequest(key_id=key_id, page_token=name), timeout=10
        ),
        lambda: stub.ValidateKeyPolicy(
            pb.ValidateKeyPolicyRequest(key_id=key_id if len(key_id) % 2 else "", policy=policy),
            timeout=10,
        ),
    ):
        try:
            call()
        except grpc.RpcError as exc:
            assert_deliberate(exc)


principals = st.one_of(
    st.just(ACCOUNT),
    st.from_regex(
        r"arn:aws:iam::111122223333:(root|role/[A-Za-z0-9]{1,12}|user/[A-Za-z0-9]{1,12})",
        fullmatch=True,
    ),
)
actions = st.sampled_from(
    [
        "kms:Decrypt",
        "kms:Encrypt",
        "kms:Describe*",
        "kms:Get*",
        "kms:List*",
        "kms:GenerateDataKey*",
        "kms:CreateGrant",
    ]
)
sids = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=12)


@st.composite
def valid_policies(draw: st.DrawFn) -> str:
    extra = []
    for i, sid in enumerate(draw(st.lists(sids, max_size=4, unique=True))):
        statement: dict[str, Any] = {
            "Sid": f"{sid}{i}",
            "Effect": draw(st.sampled_from(["Allow", "Deny"])),
            "Principal": {"AWS": draw(st.lists(principals, min_size=1, max_size=3))},
            "Action": draw(st.one_of(actions, st.lists(actions, min_size=1, max_size=3))),
            "Resource": "*",
        }
        if draw(st.booleans()):
            statement["Condition"] = {
                "StringEquals": {
                    "kms:CallerAccount": draw(st.sampled_from(["111122223333", ACCOUNT]))
                }
            }
        extra.append(statement)
    return policy_for(extra=extra)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy=valid_policies())
def test_valid_generated_policies_pass(
    stub: pb_grpc.PolicyServiceStub, real_key: str, policy: str
) -> None:
    found = stub.ValidateKeyPolicy(
        pb.ValidateKeyPolicyRequest(key_id=real_key, policy=policy), timeout=10
    )
    assert [f.code for f in found.findings if f.severity == pb.Finding.SEVERITY_ERROR] == []
    reply = stub.PutKeyPolicy(
        pb.PutKeyPolicyRequest(key_id=real_key, policy=policy, validate_only=True), timeout=10
    )
    assert reply.key_arn == real_key
