"""The limiter interface the KMS gateway draws tokens from."""

from __future__ import annotations

from typing import Protocol


class Limiter(Protocol):
    async def acquire(
        self, operation: str, *, caller: str, key: str | None, deadline: float
    ) -> None:
        """Take one token for a KMS attempt, waiting at most until `deadline` (monotonic).

        Raises errors.ResourceExhausted (reason RATE_LIMITED, with RetryInfo and
        QuotaFailure) when no token frees up in time.
        """


class NoLimit:
    """Admits everything at once."""

    async def acquire(
        self, operation: str, *, caller: str, key: str | None, deadline: float
    ) -> None:
        return None
