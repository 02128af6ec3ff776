"""Rate limiting: token buckets per KMS operation, per caller and per key."""

from kms_policy_service.ratelimit.limiter import Limiter, NoLimit

__all__ = ["Limiter", "NoLimit"]
