"""Admission: what every RPC on the gRPC listener passes before a handler runs.

gRPC reads a unary request itself and waits for it forever, holding one of
`--max-concurrent-rpcs` for as long as the peer keeps the stream open. So this
interceptor turns every handler with a single request into one that reads its
request here, which lets it, per RPC:

- refuse a caller (its identity, else its address) that already holds
  `--max-rpcs-per-caller` RPCs, or that exceeds `--caller-rpc-rate-limit`, or whose
  RPCs were refused more often than `--caller-refusal-rate-limit` (RESOURCE_EXHAUSTED);
- end a stream whose request has not arrived within `--request-receive-timeout`
  (DEADLINE_EXCEEDED, reason REQUEST_NOT_RECEIVED); request streams get that bound
  between messages;
- answer a request that does not decode with INVALID_ARGUMENT, reason
  MALFORMED_REQUEST (gRPC would answer UNKNOWN and log a traceback), logging such
  requests at a bounded rate.

Every refusal here is cheap: nothing is parsed beyond the caller's identity.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_status import rpc_status

from kms_policy_service import metrics
from kms_policy_service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    ServiceError,
    to_status,
)
from kms_policy_service.identity import CURRENT_CALLER, Identifier
from kms_policy_service.ratelimit.gcra import Bucket, MemoryStore, Rate

log = logging.getLogger(__name__)

# RPCs a caller's own mistakes or lack of rights end with: they count against its
# refusal budget. Throttling and KMS failures are the service's, and do not.
REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
MAX_TRACKED_CALLERS = 10_000  # penalties remembered at once (oldest forgotten first)
MALFORMED_LOG_INTERVAL_SECONDS = 10.0
MAX_WRAPPED_METHODS = 1024  # wrappers kept (one per served method)


@dataclass(frozen=True)
class AdmissionLimits:
    max_rpcs_per_caller: int
    receive_timeout: float  # seconds
    caller_rpc_rate: Rate | None = None
    caller_refusal_rate: Rate | None = None


class _ThrottledLog:
    """One log line per interval, saying how many were suppressed since the last."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._next = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        log.warning(message + " (%d similar suppressed)", *args, suppressed)


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, limits: AdmissionLimits, identifier: Identifier) -> None:
        self._limits = limits
        self._identifier = identifier
        self._held: dict[str, int] = {}  # RPCs in progress per caller; no zero entries
        self._rates = MemoryStore(max_buckets=MAX_TRACKED_CALLERS)
        self._refusals = MemoryStore(max_buckets=MAX_TRACKED_CALLERS)
        self._penalized: OrderedDict[str, float] = OrderedDict()  # caller -> until (monotonic)
        self._malformed_log = _ThrottledLog(MALFORMED_LOG_INTERVAL_SECONDS)
        # method -> (the handler gRPC resolved, our wrapper of it): gRPC runs interceptors
        # on every call, and the wrapper depends only on the handler. Only resolved
        # (registered) methods enter, so the map is as small as the services served.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def held(self, caller: str) -> int:
        return self._held.get(caller, 0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < MAX_WRAPPED_METHODS:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._unary_stream(method, handler.unary_stream, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._streaming(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming_out(method, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    # -- wrappers per handler kind -------------------------------------------

    def _unary(
        self, method: str, behaviour: Any, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            # _admitted inlined: nearly every RPC takes this path.
            caller = await self._enter(context)
            try:
                request = await self._receive(method, context, deserializer)
                return await behaviour(request, context)
            finally:
                self._leave(caller, context)

        return handle

    def _unary_stream(
        self, method: str, behaviour: Any, deserializer: Callable[[bytes], Any] | None
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._admitted(method, context):
                request = await self._receive(method, context, deserializer)
                if inspect.isasyncgenfunction(behaviour):
                    async for response in behaviour(request, context):
                        yield response
                else:
                    await behaviour(request, context)

        return handle

    def _streaming(
        self, method: str, behaviour: Any
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._admitted(method, context):
                return await behaviour(self._paced(method, requests, context), context)

        return handle

    def _streaming_out(
        self, method: str, behaviour: Any
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        async def handle(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._admitted(method, context):
                paced = self._paced(method, requests, context)
                if inspect.isasyncgenfunction(behaviour):
                    async for response in behaviour(paced, context):
                        yield response
                else:
                    await behaviour(paced, context)

        return handle

    # -- the steps -------------------------------------------------------------

    @asynccontextmanager
    async def _admitted(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        caller = await self._enter(context)
        try:
            yield
        finally:
            self._leave(caller, context)

    async def _enter(self, context: grpc.aio.ServicerContext) -> str:
        """Identify the caller and admit it (or abort the RPC); the caller's rate key."""
        who = self._identifier.identify(context)
        CURRENT_CALLER.set(who)
        caller = who.rate_key
        refusal = self._refuse(caller)
        if refusal is not None:
            metrics.child(metrics.admission_refusals_total, refusal.reason.lower()).inc()
            await _abort(context, refusal)
        self._held[caller] = self._held.get(caller, 0) + 1
        return caller

    def _leave(self, caller: str, context: grpc.aio.ServicerContext) -> None:
        left = self._held[caller] - 1
        if left:
            self._held[caller] = left
        else:
            del self._held[caller]
        self._count_refusal(caller, context)

    def _refuse(self, caller: str) -> ServiceError | None:
        limits = self._limits
        now = time.monotonic()
        until = self._penalized.get(caller)
        if until is not None:
            if until > now:
                return _exhausted(
                    "this caller's requests were refused too often; slow down",
                    "CALLER_REFUSALS_RATE_LIMITED",
                    "caller-refusals",
                    until - now,
                )
            del self._penalized[caller]
        if self._held.get(caller, 0) >= limits.max_rpcs_per_caller:
            return _exhausted(
                f"this caller already has {limits.max_rpcs_per_caller} calls in progress",
                "CALLER_CONCURRENCY_LIMITED",
                "caller-rpcs-in-flight",
                0.1,
            )
        if limits.caller_rpc_rate is not None:
            decision = self._rates.reserve([Bucket(caller, limits.caller_rpc_rate)], 0.0)
            if not decision.allowed:
                return _exhausted(
                    f"this caller exceeded its rate of {limits.caller_rpc_rate} calls",
                    "CALLER_RATE_LIMITED",
                    "caller-rpcs",
                    decision.retry_after,
                )
        return None

    def _count_refusal(self, caller: str, context: grpc.aio.ServicerContext) -> None:
        rate = self._limits.caller_refusal_rate
        if rate is None or context.code() not in REFUSAL_CODES:
            return
        decision = self._refusals.reserve([Bucket(caller, rate)], 0.0)
        if not decision.allowed:
            self._penalized[caller] = time.monotonic() + decision.retry_after
            self._penalized.move_to_end(caller)
            while len(self._penalized) > MAX_TRACKED_CALLERS:
                self._penalized.popitem(last=False)

    async def _receive(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        deserializer: Callable[[bytes], Any] | None,
    ) -> Any:
        """The one request message, read within the receive timeout, decoded here."""
        raw = await self._read(method, context)
        if raw is grpc.aio.EOF:
            await _abort(context, _malformed("the call ended before its request message"))
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except (DecodeError, ValueError, TypeError) as exc:
            metrics.child(metrics.admission_refusals_total, "malformed_request").inc()
            self._malformed_log.warning(
                "undecodable request to %s from %s: %s",
                method,
                _printable(context.peer() or ""),
                type(exc).__name__,
            )
            await _abort(context, _malformed("the request message does not decode"))

    async def _read(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        budget = self._limits.receive_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                return await context.read()
        except TimeoutError:
            metrics.child(metrics.admission_refusals_total, "request_not_received").inc()
            await _abort(
                context,
                DeadlineExceeded(
                    f"no request message arrived within {budget:.3g}s",
                    reason="REQUEST_NOT_RECEIVED",
                    metadata={"method": method},
                ),
            )

    async def _paced(
        self, method: str, requests: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """A request stream whose every next message is due within the receive timeout."""
        while True:
            message = await self._read(method, context)
            if message is grpc.aio.EOF:
                return
            yield message


def _exhausted(message: str, reason: str, subject: str, retry_after: float) -> ResourceExhausted:
    return ResourceExhausted(
        message,
        reason=reason,
        retry_after=max(retry_after, 0.001),
        quota_violations=[QuotaViolation(subject, message)],
    )


def _malformed(message: str) -> InvalidArgument:
    return InvalidArgument(message, reason="MALFORMED_REQUEST")


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")[:200]


async def _abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    await context.abort_with_status(rpc_status.to_status(to_status(error)))
