"""The tests' status decoder reads each violation's path as the service sends it."""

from __future__ import annotations

import json

import grpc
from google.rpc import error_details_pb2

from tests.support.status import Details


def details(*descriptions: str, **metadata: str) -> Details:
    bad = error_details_pb2.BadRequest()
    for description in descriptions:
        bad.field_violations.add(field="policy", description=description, reason="R")
    info = error_details_pb2.ErrorInfo(reason="INVALID_POLICY", metadata=metadata)
    return Details(grpc.StatusCode.INVALID_ARGUMENT, "m", info, bad_request=bad)


def test_paths_are_the_ones_the_service_sends_even_where_a_json_key_holds_a_colon() -> None:
    # Splitting "path: description" would stop at the colon inside the key.
    odd = "Statement[0].Condition.Weird: Op"
    sent = details(
        f"{odd}: not an operator", "Statement: missing", violationPaths=json.dumps([odd, ""])
    )
    assert sent.paths == [odd, ""]


def test_without_the_metadata_paths_come_from_the_descriptions() -> None:
    sent = details("Statement[1].Sid: bad", "the policy is not JSON")
    assert sent.paths == ["Statement[1].Sid", ""]
