"""Decode the google.rpc details of a failed call, for assertions."""

from __future__ import annotations

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
        """The JSON path each violation's description starts with ("" for the whole document)."""
        assert self.bad_request is not None
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
