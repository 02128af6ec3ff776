"""One RPC's frame: its RequestContext, metrics, access record and the status it ends with.

`RpcFrame.run(method, context, handler)` builds the context (request id, caller,
deadline), counts the call, runs the handler, turns a ServiceError (or an
unexpected exception) into the google.rpc status, and writes the access record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status

from kms_policy_service import logs, metrics
from kms_policy_service.contract import POLICY_SERVICE
from kms_policy_service.errors import Internal, ServiceError, internal_error, to_status
from kms_policy_service.identity import CURRENT_CALLER, Identifier
from kms_policy_service.request import RequestContext

log = logging.getLogger(__name__)

Reply = TypeVar("Reply")
MAX_REQUEST_ID_CHARS = 128


class RpcFrame:
    def __init__(
        self, identifier: Identifier, *, default_deadline: float, max_deadline: float
    ) -> None:
        self._identifier = identifier
        self._default_deadline = default_deadline
        self._max_deadline = max_deadline
        self._running: set[asyncio.Task[Any]] = set()
        self.in_flight = 0  # read by the kms_policy_rpcs_in_flight gauge at scrape time

    async def run(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handler: Callable[[RequestContext], Awaitable[Reply]],
    ) -> Reply:
        started = time.monotonic()
        ctx = self._context(method, context, started)
        code, reason = grpc.StatusCode.OK, ""
        labels = ("unary", POLICY_SERVICE, method)
        metrics.child(metrics.grpc_server_started_total, *labels).inc()
        self.in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await context.send_initial_metadata((("x-request-id", ctx.request_id),))
            return await handler(ctx)
        except ServiceError as err:
            code, reason = err.code, err.reason
            await abort(context, err, ctx)
        except asyncio.CancelledError:
            code, reason = grpc.StatusCode.CANCELLED, "CANCELLED"
            raise
        except Exception:
            log.exception("unexpected failure in %s (request id %s)", method, ctx.request_id)
            internal = internal_error(ctx.request_id)
            code, reason = internal.code, internal.reason
            await abort(context, internal, ctx)
        finally:
            elapsed = time.monotonic() - started
            self.in_flight -= 1
            self._running.discard(task)
            metrics.child(metrics.grpc_server_handled_total, *labels, code.name).inc()
            metrics.child(metrics.grpc_server_handling_seconds, *labels).observe(elapsed)
            if logs.access_enabled():
                logs.access(
                    {
                        "method": method,
                        "code": code.name,
                        "reason": reason,
                        "duration_ms": round(elapsed * 1000, 3),
                        "caller": ctx.caller,
                        "peer": ctx.peer,
                        "key_arn": ctx.key_arn,
                        "request_id": ctx.request_id,
                        "kms_attempts": ctx.kms_attempts,
                    }
                )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def drain(self, within: float) -> None:
        """After the listener stopped: let cancelled handlers record their outcomes."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=within)

    def _context(
        self, method: str, context: grpc.aio.ServicerContext, started: float
    ) -> RequestContext:
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str):
                request_id = value[:MAX_REQUEST_ID_CHARS]
                break
        remaining = context.time_remaining()
        # Bounded either way: no caller holds a lock or a slot for longer than max_deadline.
        remaining = min(
            self._default_deadline if remaining is None else remaining, self._max_deadline
        )
        caller = CURRENT_CALLER.get() or self._identifier.identify(context)
        return RequestContext(
            request_id=request_id or os.urandom(16).hex(),
            method=method,
            caller=caller.identity or "",
            peer=caller.peer,
            rate_key=caller.rate_key,
            deadline=started + remaining,
        )


async def abort(context: grpc.aio.ServicerContext, err: ServiceError, ctx: RequestContext) -> None:
    if isinstance(err, Internal) and err.message != internal_error(ctx.request_id).message:
        # Full detail only in the server log; the caller gets the request id to report.
        log.error(
            "internal error in %s (request id %s): %s", ctx.method, ctx.request_id, err.message
        )
        err.message = internal_error(ctx.request_id).message
    if (
        ctx.key_arn
        and "keyArn" not in err.metadata
        and err.code != grpc.StatusCode.PERMISSION_DENIED
    ):
        err.metadata["keyArn"] = ctx.key_arn
    status = to_status(err, request_id=ctx.request_id)
    if err.violations_left_out:
        metrics.child(metrics.findings_truncated_total, "status").inc()
    await context.abort_with_status(rpc_status.to_status(status))
