"""IAM wildcard matching: `*` any run of characters, `?` exactly one; all else literal.

Policy strings come from callers, so nothing here compiles a caller's pattern or
caches anything (fnmatch compiles each distinct pattern to a regex and keeps
32,768 of them: one unique 32 KB action per request grew the process without
bound). Unlike fnmatch, `[` is literal, as in IAM.

The pattern is read once, left to right, against every text at the same time
(bit-parallel simulation, Shift-And): bit i of the state says "the pattern so
far matches the first i characters of a text", all texts side by side in one
integer. Each pattern character is a few integer operations, so the work is
linear in the pattern whatever its wildcards, and it stops at the first
character no text can match. Only the texts, which the service chooses (the
KMS action names, a key ARN, an authorization subject), are prepared.
"""

from __future__ import annotations

from collections.abc import Iterable


class WildcardTexts:
    """Fixed texts, ready to be matched against many patterns."""

    def __init__(self, texts: Iterable[str], *, ignore_case: bool = False) -> None:
        self.texts = tuple(t.lower() if ignore_case else t for t in texts)
        self.ignore_case = ignore_case  # IAM action names; ARNs are case-sensitive
        # Text k owns bits start..end, one per prefix length; `end` is the whole text.
        self._start = 0  # bit 0 of every text: the empty prefix
        self._ends = 0  # the last bit of every text: all of it matched
        self._chars = 0  # every bit that is followed by one more character
        self._masks: dict[str, int] = {}  # character -> bits followed by that character
        self._end_bits: list[int] = []
        offset = 0
        for text in self.texts:
            self._start |= 1 << offset
            for i, c in enumerate(text):
                bit = 1 << (offset + i)
                self._chars |= bit
                self._masks[c] = self._masks.get(c, 0) | bit
            end = 1 << (offset + len(text))
            self._ends |= end
            self._end_bits.append(end)
            offset += len(text) + 1

    def _final_state(self, pattern: str) -> int:
        if self.ignore_case:
            pattern = pattern.lower()
        state = self._start
        ends, chars, masks = self._ends, self._chars, self._masks
        star = False
        for c in pattern:
            if c == "*":
                if star:
                    continue  # `**` means what `*` means
                star = True
                # Within each text, fill from its lowest live bit up to its end. Per text
                # `end - low` borrows only inside that text (low < end there), and
                # XOR end, OR low, gives every bit from the lowest live one to the end.
                low = state & ~ends
                state |= (ends - low) ^ ends
                continue  # a `*` never empties the state
            star = False
            state = (state & (chars if c == "?" else masks.get(c, 0))) << 1
            if not state:
                break  # no text can match whatever follows
        return state & ends

    def matching(self, pattern: str) -> list[str]:
        """The texts that match `pattern` as a whole (lowercased if ignore_case)."""
        final = self._final_state(pattern)
        return [t for t, end in zip(self.texts, self._end_bits, strict=True) if final & end]

    def any_match(self, pattern: str) -> bool:
        return bool(self._final_state(pattern))


def wildcard_match(pattern: str, text: str, *, ignore_case: bool = False) -> bool:
    """True when `text` matches the IAM wildcard `pattern` as a whole."""
    return WildcardTexts((text,), ignore_case=ignore_case).any_match(pattern)
