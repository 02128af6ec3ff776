"""The KMS gateway: the one typed way the service calls KMS.

Each method is one KMS operation, run under the limiter (a token per attempt), the
caller's deadline and the retry policy; failures come back as the caller-facing
errors of errors.KMS_ERROR_TABLE, naming the key they were about. The account a
call goes to is the one its key ARN or alias ARN names (the home account otherwise);
with an account rate limit, each account's calls (per Region) share one bucket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from kms_policy_service import metrics
from kms_policy_service.accounts import AccountRoles
from kms_policy_service.backend import (
    ASSUME_ROLE,
    KeyMetadata,
    KmsBackend,
    KmsFailure,
    Operation,
    PolicyPage,
)
from kms_policy_service.errors import (
    CONNECTION_ERROR,
    HTTP_5XX,
    READ_TIMEOUT,
    DeadlineExceeded,
    QuotaViolation,
    ResourceExhausted,
    from_kms_failure,
    kms_rule,
)
from kms_policy_service.ratelimit import Limiter
from kms_policy_service.request import RequestContext
from kms_policy_service.validation.keys import account_of

T = TypeVar("T")

# Failures after which the request may still have taken effect at KMS (it was sent,
# and no answer from KMS says it was refused): the caller's outcome is unknown.
MAY_HAVE_TAKEN_EFFECT = frozenset(
    {
        CONNECTION_ERROR,
        READ_TIMEOUT,
        HTTP_5XX,
        "InternalFailure",
        "ServiceUnavailable",
        "KMSInternalException",
        "DependencyTimeoutException",
    }
)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base: float  # seconds; the first backoff is drawn from [0, base]
    cap: float  # seconds; no backoff draws from a wider range
    margin: float  # seconds kept back from the caller's deadline

    uniform: Callable[[float, float], float] = random.uniform  # injected by tests

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS Architecture Blog, 2015)."""
        return self.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


class KmsGateway:
    def __init__(
        self,
        backend: KmsBackend,
        limiter: Limiter,
        retry: RetryPolicy,
        *,
        max_concurrency: int,
        max_waiters: int,
        home_account: str = "",
        accounts: AccountRoles | None = None,
    ) -> None:
        self._backend = backend
        self._home_account = home_account
        self._accounts = accounts or AccountRoles()
        self._limiter = limiter
        self._retry = retry
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_waiters = max_waiters
        self.waiting = 0  # for a KMS connection slot
        self.in_flight = 0  # read by the kms_requests_in_flight gauge at scrape time

    def account_of(self, key_id: str) -> str:
        """The account a key identifier names: its ARN's, else the home account."""
        return account_of(key_id) or self._home_account

    def sessions_per_caller(self, key_id: str) -> bool:
        """Whether calls about `key_id` go out under each caller's own tagged session:
        then one caller's answer must not be handed to another."""
        return self._accounts.caller_session_tags and self._accounts.role_for(key_id) is not None

    def session_facts(self, key_id: str, ctx: RequestContext) -> dict[str, str]:
        """For audit records: the account, the role assumed there and the session's identity."""
        facts = {"account": self.account_of(key_id)}
        member = self._accounts.role_for(key_id)
        if member is not None:
            facts["role_arn"] = member[1]
            if self._accounts.caller_session_tags:
                facts["session_identity"] = ctx.caller
        return facts

    # -- the operations -------------------------------------------------------

    async def describe_key(self, key_id: str, *, region: str, ctx: RequestContext) -> KeyMetadata:
        return await self._call(
            Operation.DESCRIBE_KEY,
            lambda: self._backend.describe_key(key_id, region=region, caller=ctx.caller),
            ctx=ctx,
            key_arn=None,
            account=f"{self.account_of(key_id)}:{region}",
        )

    async def get_key_policy(
        self, key_arn: str, policy_name: str, *, region: str, ctx: RequestContext
    ) -> str:
        return await self._call(
            Operation.GET_KEY_POLICY,
            lambda: self._backend.get_key_policy(
                key_arn, policy_name, region=region, caller=ctx.caller
            ),
            ctx=ctx,
            key_arn=key_arn,
            account=f"{self.account_of(key_arn)}:{region}",
        )

    async def put_key_policy(
        self,
        key_arn: str,
        policy_name: str,
        policy: str,
        *,
        bypass_lockout_check: bool,
        region: str,
        ctx: RequestContext,
    ) -> None:
        await self._call(
            Operation.PUT_KEY_POLICY,
            lambda: self._backend.put_key_policy(
                key_arn,
                policy_name,
                policy,
                bypass_lockout_check=bypass_lockout_check,
                region=region,
                caller=ctx.caller,
            ),
            ctx=ctx,
            key_arn=key_arn,
            account=f"{self.account_of(key_arn)}:{region}",
            key_bucket=True,  # writes also spend the key's own bucket
        )

    async def list_key_policies(
        self,
        key_arn: str,
        *,
        limit: int | None,
        marker: str | None,
        region: str,
        ctx: RequestContext,
    ) -> PolicyPage:
        return await self._call(
            Operation.LIST_KEY_POLICIES,
            lambda: self._backend.list_key_policies(
                key_arn, limit=limit, marker=marker, region=region, caller=ctx.caller
            ),
            ctx=ctx,
            key_arn=key_arn,
            account=f"{self.account_of(key_arn)}:{region}",
        )

    # -- the machinery --------------------------------------------------------

    async def _call(
        self,
        operation: Operation,
        fn: Callable[[], Awaitable[T]],
        *,
        ctx: RequestContext,
        key_arn: str | None,
        account: str,
        key_bucket: bool = False,
    ) -> T:
        """Run `fn` (one KMS request) with retries; every attempt takes a limiter token."""
        attempt = 0
        while True:
            attempt += 1
            budget = ctx.remaining() - self._retry.margin
            if budget <= 0:
                raise _deadline(operation)
            await self._limiter.acquire(
                operation,
                caller=ctx.rate_key,
                key=key_arn if key_bucket else None,
                deadline=ctx.deadline - self._retry.margin,
                account=account,
            )
            budget = ctx.remaining() - self._retry.margin
            if budget <= 0:
                raise _deadline(operation)
            if attempt > 1:
                metrics.child(metrics.kms_retries_total, operation).inc()
            try:
                async with asyncio.timeout(budget) as timer:
                    return await self._attempt(operation, fn, ctx)
            except TimeoutError as exc:
                if timer.expired():
                    # Leaving the timeout cancelled the request: aiohttp drops the connection.
                    raise _deadline(operation) from exc
                raise
            except KmsFailure as failure:
                # A member account's credentials failed: STS's row, about AssumeRole.
                failed = failure.operation or operation
                rule = kms_rule(failure.code, failed, failure.http_status)
                delay = self._retry.backoff(attempt)
                if (
                    rule.retryable
                    and attempt < self._retry.max_attempts
                    and ctx.remaining() - self._retry.margin > delay
                ):
                    log.debug(
                        "retrying %s after %s (attempt %d, %.3fs)",
                        operation,
                        failure.code,
                        attempt,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise from_kms_failure(
                    failure.code,
                    failure.message,
                    operation=failed,
                    http_status=failure.http_status,
                    key_arn=key_arn,
                ) from failure

    async def _attempt(
        self, operation: str, fn: Callable[[], Awaitable[T]], ctx: RequestContext
    ) -> T:
        """One KMS request, within the bound on calls in flight (load shedding past it)."""
        if self._slots.locked():
            if self.waiting >= self._max_waiters:
                metrics.child(metrics.ratelimit_refusals_total, "concurrency").inc()
                raise _overloaded()
            self.waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        ctx.kms_attempts += 1
        self.in_flight += 1
        started = time.monotonic()
        outcome = "cancelled"
        try:
            result = await fn()
            outcome = "ok"
            return result
        except KmsFailure as failure:
            failed = failure.operation or operation
            outcome = kms_rule(failure.code, failed, failure.http_status).reason.lower()
            if failure.code in MAY_HAVE_TAKEN_EFFECT and failure.operation != ASSUME_ROLE:
                ctx.kms_uncertain += 1  # (no KMS request is sent without credentials)
            raise
        except BaseException:  # cancelled or timed out with the request on its way
            ctx.kms_uncertain += 1
            raise
        finally:
            self._slots.release()
            self.in_flight -= 1
            metrics.child(metrics.kms_requests_total, operation, outcome).inc()
            metrics.child(metrics.kms_request_duration_seconds, operation).observe(
                time.monotonic() - started
            )


def _overloaded() -> ResourceExhausted:
    return ResourceExhausted(
        "the service has too many KMS calls in flight and queued; retry shortly",
        reason="OVERLOADED",
        retry_after=0.1,
        quota_violations=[QuotaViolation("concurrency", "KMS calls in flight and queued")],
    )


def _deadline(operation: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the call's deadline ran out before KMS {operation} completed",
        metadata={"kmsOperation": operation},
    )
