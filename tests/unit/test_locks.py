"""Per-key locks: writers to one key take turns, others do not wait, memory is released."""

from __future__ import annotations

import asyncio

import pytest

from kms_policy_service.locks import KeyLocks


async def test_writers_to_one_key_take_turns_and_other_keys_do_not_wait() -> None:
    locks = KeyLocks()
    order: list[str] = []

    async def write(key: str, tag: str, hold: float) -> None:
        async with locks.hold(key, wait=5):
            order.append(f"{tag}+")
            await asyncio.sleep(hold)
            order.append(f"{tag}-")

    await asyncio.gather(write("k", "a", 0.05), write("k", "b", 0.0), write("other", "c", 0.0))
    assert order.index("a-") < order.index("b+")
    assert order.index("c-") < order.index("a-")
    assert len(locks) == 0


async def test_waiting_for_a_lock_is_bounded() -> None:
    locks = KeyLocks()
    async with locks.hold("k", wait=5):
        with pytest.raises(TimeoutError):
            async with locks.hold("k", wait=0.05):
                pass
    assert len(locks) == 0
