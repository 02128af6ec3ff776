"""RequestContext: what one RPC carries through the layers (id, caller, deadline, counters)."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class RequestContext:
    request_id: str
    method: str
    caller: str  # the caller's identity, "" when unidentified
    peer: str
    rate_key: str  # what per-caller rate buckets are keyed by
    deadline: float  # time.monotonic() by which the answer is due
    kms_attempts: int = 0
    kms_uncertain: int = 0  # attempts that may have taken effect although they failed
    key_arn: str = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()
