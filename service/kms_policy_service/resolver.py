"""Key resolution: any accepted key identifier to the key's metadata, via a short TTL cache.

KMS Put/Get/ListKeyPolicies take only key IDs and key ARNs; DescribeKey also takes
aliases, and tells AWS-managed keys apart (KeyManager). A key must resolve inside the
account its identifier names (the home account for alias names and bare key IDs).

Refresh ahead: an entry used after a point drawn at random from the last part of its
life (REFRESH_FROM..REFRESH_TO of the TTL) is re-resolved in the background while
callers keep getting the cached answer. Keys in use therefore never expire under
their callers, and keys resolved together (a warm-up) are refreshed at scattered
moments, not in one burst; keys not used any more simply expire.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kms_policy_service.backend import KeyMetadata
from kms_policy_service.errors import FieldViolation, InvalidArgument
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.reads import SingleFlight
from kms_policy_service.request import RequestContext
from kms_policy_service.validation import KeyRef, check_key_scope

log = logging.getLogger(__name__)
REFRESH_FROM, REFRESH_TO = 0.5, 0.9  # of the TTL: when an entry in use is refreshed
REFRESH_DEADLINE_SECONDS = 5.0  # a background refresh's own deadline
CacheKey = tuple[str, str, str]  # (region, identifier, caller or "" when shared)


@dataclass(frozen=True)
class ResolvedKey:
    metadata: KeyMetadata
    region: str

    @property
    def arn(self) -> str:
        return self.metadata.arn


class KeyResolver:
    def __init__(
        self,
        gateway: KmsGateway,
        *,
        account: str,
        home_region: str,
        allowed_regions: frozenset[str],
        ttl: float,
        max_entries: int,
        member_accounts: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,  # injected by tests
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._gateway = gateway
        self._account = account
        self._member_accounts = member_accounts
        self._home_region = home_region
        self._allowed_regions = allowed_regions
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._uniform = uniform
        # (region, identifier, caller or "") -> (expires, refresh after, resolution)
        self._cache: OrderedDict[CacheKey, tuple[float, float, ResolvedKey]] = OrderedDict()
        self._describe: SingleFlight[KeyMetadata] = SingleFlight("key")
        self._refreshing: dict[CacheKey, asyncio.Task[None]] = {}

    def names_of(self, ref: KeyRef) -> tuple[str, ...]:
        """The names authorization rules may match for `ref` (see KeyRef.names_at_home)."""
        return ref.names_at_home(self._account, self._home_region)

    def region_of(self, ref: KeyRef) -> str:
        """The Region serving `ref`; refuses other accounts and Regions not allowed."""
        return check_key_scope(
            ref,
            account=self._account,
            home_region=self._home_region,
            allowed_regions=self._allowed_regions,
            member_accounts=self._member_accounts,
        )

    async def resolve(self, ref: KeyRef, ctx: RequestContext) -> ResolvedKey:
        region = self.region_of(ref)
        # Under the caller's own tagged session, the caller's answer is its own.
        who = ctx.caller if self._gateway.sessions_per_caller(ref.raw) else ""
        cache_key = (region, ref.raw, who)
        now = self._clock()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            if hit[1] <= now:
                self._refresh_ahead(cache_key, ref, ctx)
            return hit[2]
        return await self._resolve(cache_key, ref, ctx)

    async def settle(self) -> None:
        """Wait for the background refreshes in flight (tests, shutdown)."""
        while self._refreshing:
            await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def _resolve(self, cache_key: CacheKey, ref: KeyRef, ctx: RequestContext) -> ResolvedKey:
        region = cache_key[0]
        # Concurrent misses for one key share one DescribeKey (a cold start under load).
        metadata = await self._describe.read(
            cache_key,
            lambda: self._gateway.describe_key(ref.raw, region=region, ctx=ctx),
            deadline=ctx.deadline,
        )
        account = ref.account or self._account
        if f":{account}:" not in metadata.arn:
            # An alias cannot point across accounts; refuse rather than trust it.
            self._cache.pop(cache_key, None)
            message = f"key {ref.raw!r} resolved to {metadata.arn}, outside account {account}"
            raise InvalidArgument(
                message,
                reason="CROSS_ACCOUNT_KEY",
                field_violations=[FieldViolation("key_id", message, reason="CROSS_ACCOUNT_KEY")],
            )
        resolved = ResolvedKey(metadata, region)
        if self._ttl > 0:
            now = self._clock()
            refresh = now + self._ttl * self._uniform(REFRESH_FROM, REFRESH_TO)
            self._cache[cache_key] = (now + self._ttl, refresh, resolved)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return resolved

    def _refresh_ahead(self, cache_key: CacheKey, ref: KeyRef, ctx: RequestContext) -> None:
        # At most one per entry, so bounded by --key-cache-max-entries (and KMS calls by
        # the gateway's own bounds).
        if cache_key in self._refreshing:
            return
        # Its own context: the refresh outlives the request that noticed it was due.
        own = RequestContext(
            request_id=f"{ctx.request_id}-refresh",
            method="DescribeKey",
            caller=ctx.caller,
            peer=ctx.peer,
            rate_key=ctx.rate_key,
            deadline=time.monotonic() + REFRESH_DEADLINE_SECONDS,
        )

        async def refresh() -> None:
            try:
                await self._resolve(cache_key, ref, own)
            except Exception as exc:  # the entry serves until it expires; then callers see it
                log.debug("refreshing %s failed: %s", ref.raw[:200], type(exc).__name__)
            finally:
                self._refreshing.pop(cache_key, None)

        self._refreshing[cache_key] = asyncio.get_running_loop().create_task(refresh())
