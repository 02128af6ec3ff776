"""Rate limiting: GCRA buckets per KMS operation, per caller and per key, in memory or Redis."""

from kms_policy_service.ratelimit.gcra import Bucket, Decision, MemoryStore, Rate
from kms_policy_service.ratelimit.limiter import (
    Limiter,
    Limits,
    LocalStore,
    NoLimit,
    RateLimiter,
    SharedStore,
)
from kms_policy_service.settings import DEFAULT_KEY_WRITE_RATE, DEFAULT_OPERATION_RATES

__all__ = [
    "DEFAULT_KEY_WRITE_RATE",
    "DEFAULT_OPERATION_RATES",
    "Bucket",
    "Decision",
    "Limiter",
    "Limits",
    "LocalStore",
    "MemoryStore",
    "NoLimit",
    "Rate",
    "RateLimiter",
    "SharedStore",
]
