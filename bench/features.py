"""Switch one of the service's features off, to measure what it costs (bench only).

Each switch patches the running benchmark server's classes; none exists in the
service, where every feature is always on. `python -m bench --only features` runs the
service with each switched off in turn, then with all of them off, side by side.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kms_policy_service import metrics
from kms_policy_service.admission import Admission
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.ratelimit.limiter import RateLimiter
from kms_policy_service.reads import PolicyReads
from kms_policy_service.rpc import RpcFrame
from kms_policy_service.servicer import PolicyServicer

T = TypeVar("T")


class _Silent:
    """A metric child that counts nothing."""

    def inc(self, *_: Any) -> None: ...
    def dec(self, *_: Any) -> None: ...
    def set(self, *_: Any) -> None: ...
    def observe(self, *_: Any) -> None: ...


class _NoInitialMetadata:
    """A servicer context whose send_initial_metadata does nothing (no x-request-id)."""

    def __init__(self, context: Any) -> None:
        self._context = context

    async def send_initial_metadata(self, _: Any) -> None: ...

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _request_id() -> None:
    run = RpcFrame.run

    async def without(self: RpcFrame, method: str, context: Any, handler: Any) -> Any:
        return await run(self, method, _NoInitialMetadata(context), handler)

    RpcFrame.run = without  # type: ignore[method-assign]


def _admission() -> None:
    def passthrough(self: Admission, continuation: Callable[..., Any], details: Any) -> Any:
        return continuation(details)  # gRPC's own handler: no receive timeout, no shares

    Admission.intercept_service = passthrough  # type: ignore[method-assign]


def _authorization() -> None:
    async def allow(self: PolicyServicer, ctx: Any, ref: Any) -> None:
        return None

    PolicyServicer._authorize = allow  # type: ignore[method-assign]


def _limiter() -> None:
    async def no_limit(self: RateLimiter, operation: str, **_: Any) -> None: ...

    RateLimiter.acquire = no_limit  # type: ignore[method-assign]


def _gateway() -> None:
    # Deadline timers, retries, the bound on KMS calls in flight and the limiter's token.
    async def once(self: KmsGateway, operation: str, fn: Callable[[], Awaitable[T]], **_: Any) -> T:
        return await fn()

    KmsGateway._call = once  # type: ignore[method-assign]


def _metrics() -> None:
    silent = _Silent()
    metrics.child = lambda metric, *labels: silent


def _shared_reads() -> None:
    async def fetch_alone(
        self: PolicyReads, key_arn: str, name: str, fetch: Callable[[], Awaitable[str]], **_: Any
    ) -> str:
        return await fetch()

    PolicyReads.read = fetch_alone  # type: ignore[method-assign]


# "access-records" is no patch: the benchmark server runs with --log-level WARNING,
# as an operator would to turn them off (the access record is an INFO record).
SWITCHES: dict[str, Callable[[], None]] = {
    "request-id": _request_id,
    "admission": _admission,
    "authorization": _authorization,
    "limiter": _limiter,
    "gateway": _gateway,
    "metrics": _metrics,
    "shared-reads": _shared_reads,
}


FEATURES = ("access-records", *SWITCHES)


def switch_off(names: list[str]) -> None:
    for name in names:
        if name in SWITCHES:
            SWITCHES[name]()
