"""IAM wildcards: `*` and `?` only, `[` literal, and nothing compiled or cached per pattern."""

from __future__ import annotations

import fnmatch
import re
import sys
import tracemalloc
from collections.abc import Callable
from types import FrameType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms_policy_service.validation import wildcards
from kms_policy_service.validation.wildcards import WildcardTexts, wildcard_match


def reference(pattern: str, text: str) -> bool:
    """The meaning, spelled as a regex (test only: this compiles the pattern)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("", "", True),
        ("", "a", False),
        ("*", "", True),
        ("*", "anything at all", True),
        ("?", "", False),
        ("?", "x", True),
        ("??", "x", False),
        ("kms:*", "kms:PutKeyPolicy", True),
        ("kms:Put*", "kms:PutKeyPolicy", True),
        ("kms:*Policy", "kms:PutKeyPolicy", True),
        ("kms:*Policy", "kms:PutKeyPolicyX", False),
        ("kms:?utKeyPolicy", "kms:PutKeyPolicy", True),
        ("kms:*Key*", "kms:PutKeyPolicy", True),
        ("kms:*y*y*y", "kms:PutKeyPolicy", False),
        ("kms:**Policy", "kms:PutKeyPolicy", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYcZ", False),
        ("a*b?c", "abbbXc", True),
        ("*ab", "aab", True),
        ("*aab", "aaab", True),
        ("[ab]", "a", False),  # fnmatch says True: IAM has no character classes
        ("[ab]", "[ab]", True),
        ("arn:aws:kms:*:111122223333:key/[*]", "arn:aws:kms:x:111122223333:key/[k]", True),
        ("a!b", "a!b", True),
        ("*", "*", True),
        ("a*", "a\nb", True),  # `*` crosses newlines, as in IAM
    ],
)
def test_a_pattern_matches_as_iam_means_it(pattern: str, text: str, expected: bool) -> None:
    assert wildcard_match(pattern, text) is expected


def test_arns_are_case_sensitive_and_action_names_need_not_be() -> None:
    assert not wildcard_match("arn:aws:kms:*:KEY/*", "arn:aws:kms:x:key/k")
    assert wildcard_match("KMS:putkey*", "kms:PutKeyPolicy", ignore_case=True)
    assert not wildcard_match("KMS:putkey*", "kms:PutKeyPolicy")


def test_one_pattern_against_many_texts_names_each_match() -> None:
    texts = WildcardTexts(["kms:Decrypt", "kms:Encrypt", "kms:PutKeyPolicy", ""], ignore_case=True)
    assert texts.matching("kms:*crypt") == ["kms:decrypt", "kms:encrypt"]
    assert texts.matching("*") == ["kms:decrypt", "kms:encrypt", "kms:putkeypolicy", ""]
    assert texts.matching("kms:x*") == []
    assert texts.any_match("KMS:PUT*") and not texts.any_match("kms:Get*")
    assert WildcardTexts([]).matching("*") == []


alphabet = st.sampled_from("ab*?[.\\")


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet, max_size=12), st.text(st.sampled_from("ab*?[.\\"), max_size=12))
def test_it_agrees_with_the_regex_reference(pattern: str, text: str) -> None:
    assert wildcard_match(pattern, text) is reference(pattern, text)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet, max_size=10), st.lists(st.text(st.sampled_from("ab.["), max_size=8)))
def test_many_texts_at_once_agree_with_one_at_a_time(pattern: str, texts: list[str]) -> None:
    assert WildcardTexts(texts).matching(pattern) == [t for t in texts if reference(pattern, t)]


def test_unique_patterns_leave_no_compiled_or_cached_state() -> None:
    before = fnmatch._compile_pattern.cache_info()  # type: ignore[attr-defined]
    re_cache = len(re._cache)  # type: ignore[attr-defined]
    texts = WildcardTexts(["kms:putkeypolicy", "kms:decrypt"], ignore_case=True)
    tracemalloc.start()
    try:
        for i in range(200):  # warm up
            texts.matching(f"kms:{i}*" + "ab?*" * 2000)
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            texts.matching(f"kms:{i}x*" + "ab?*" * 2000)
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert fnmatch._compile_pattern.cache_info() == before  # type: ignore[attr-defined]
    assert len(re._cache) == re_cache  # type: ignore[attr-defined]
    assert grown < 64 * 1024


def lines_run(texts: WildcardTexts, pattern: str) -> int:
    """Lines of the matcher executed: a deterministic measure of its work."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> object:
        nonlocal count
        if frame.f_code.co_filename == wildcards.__file__:
            count += event == "line"
            return tracer
        return None

    sys.settrace(tracer)
    try:
        texts.matching(pattern)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: "*a" * n,  # quadratic for a backtracking matcher against "aaaa...b"
        lambda n: "*" + "?*" * n,
        lambda n: "a*" * n + "b",
        lambda n: "*" * (2 * n),
        lambda n: "kms:*" + "?" * n + "x",
    ],
)
def test_a_hostile_pattern_costs_work_linear_in_its_length(shape: Callable[[int], str]) -> None:
    texts = WildcardTexts(["a" * 60 + "b", "kms:generatedatakeypairwithoutplaintext"])
    for n in (500, 4000):
        pattern = shape(n)
        assert texts.matching(pattern) == [t for t in texts.texts if reference(pattern, t)]
        assert lines_run(texts, pattern) <= 8 * len(pattern) + 50
