"""Decode the google.rpc details of a failed call, for assertions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

_PATH = re.compile(r"[A-Za-z][\w.\[\]:-]*")


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    error_info: error_details_pb2.ErrorInfo
    bad_request: error_details_pb2.BadRequest | None = None
    retry_info: error_details_pb2.RetryInfo | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    precondition_failure: error_details_pb2.PreconditionFailure | None = None
    resource_info: error_details_pb2.ResourceInfo | None = None
    error_info_count: int = 0
    types: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.error_info.reason

    @property
    def paths(self) -> list[str]:
        """The JSON path of each violation ("" for the whole document): the service's
        ErrorInfo `violationPaths` when it sends them (exact, even where a JSON key holds
        ": "), else the head each description starts with."""
        assert self.bad_request is not None
        sent = self.error_info.metadata.get("violationPaths")
        if sent is not None:
            paths = json.loads(sent)
            assert isinstance(paths, list) and all(isinstance(p, str) for p in paths), sent
            assert len(paths) == len(self.bad_request.field_violations), sent
            return paths
        out = []
        for v in self.bad_request.field_violations:
            head, sep, _ = v.description.partition(": ")
            out.append(head if sep and _PATH.fullmatch(head) else "")
        return out


def details_of(error: grpc.RpcError) -> Details:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"no status details on {error}"
    found: dict[str, object] = {}
    count = 0
    types = []
    for any_msg in status.details:
        types.append(any_msg.TypeName())
        for name, cls in (
            ("error_info", error_details_pb2.ErrorInfo),
            ("bad_request", error_details_pb2.BadRequest),
            ("retry_info", error_details_pb2.RetryInfo),
            ("quota_failure", error_details_pb2.QuotaFailure),
            ("precondition_failure", error_details_pb2.PreconditionFailure),
            ("resource_info", error_details_pb2.ResourceInfo),
        ):
            if any_msg.Is(cls.DESCRIPTOR):
                msg = cls()
                any_msg.Unpack(msg)
                found[name] = msg
                if name == "error_info":
                    count += 1
    return Details(
        code=error.code(),  # type: ignore[attr-defined]
        message=status.message,
        error_info_count=count,
        types=types,
        **found,  # type: ignore[arg-type]
    )
