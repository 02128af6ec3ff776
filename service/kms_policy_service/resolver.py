"""Key resolution: any accepted key identifier to the key's metadata, via a short TTL cache.

KMS Put/Get/ListKeyPolicies take only key IDs and key ARNs; DescribeKey also takes
aliases, and tells AWS-managed keys apart (KeyManager). A key must resolve inside the
account its identifier names (the home account for alias names and bare key IDs).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from kms_policy_service.backend import KeyMetadata
from kms_policy_service.errors import FieldViolation, InvalidArgument
from kms_policy_service.gateway import KmsGateway
from kms_policy_service.reads import SingleFlight
from kms_policy_service.request import RequestContext
from kms_policy_service.validation import KeyRef, check_key_scope


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
    ) -> None:
        self._gateway = gateway
        self._account = account
        self._member_accounts = member_accounts
        self._home_region = home_region
        self._allowed_regions = allowed_regions
        self._ttl = ttl
        self._max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, ResolvedKey]] = OrderedDict()
        self._describe: SingleFlight[KeyMetadata] = SingleFlight()

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
        cache_key = (region, ref.raw)
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        # Concurrent misses for one key share one DescribeKey (a cold start under load).
        metadata = await self._describe.read(
            region, ref.raw, lambda: self._gateway.describe_key(ref.raw, region=region, ctx=ctx)
        )
        account = ref.account or self._account
        if f":{account}:" not in metadata.arn:
            # An alias cannot point across accounts; refuse rather than trust it.
            message = f"key {ref.raw!r} resolved to {metadata.arn}, outside account {account}"
            raise InvalidArgument(
                message,
                reason="CROSS_ACCOUNT_KEY",
                field_violations=[FieldViolation("key_id", message, reason="CROSS_ACCOUNT_KEY")],
            )
        resolved = ResolvedKey(metadata, region)
        if self._ttl > 0:
            self._cache[cache_key] = (now + self._ttl, resolved)
            self._cache.move_to_end(cache_key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return resolved
