"""The Finding value: one problem found in a request, with its JSON path."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from kms_policy_service.errors import FieldViolation, InvalidArgument


class Severity(enum.Enum):
    ERROR = 1  # PutKeyPolicy refuses the request
    WARNING = 2  # accepted, but risky or unusual


def encodable(text: str) -> str:
    """`text` with any lone UTF-16 surrogate spelled as its escape (`\\ud800`).

    JSON can carry such escapes, but protobuf, UTF-8 and so every reply, trailer
    and log line refuse them; a finding quoting a caller's text must never hold one.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    path: str
    message: str

    def __post_init__(self) -> None:
        # Paths name JSON keys and messages quote values: both are the caller's text.
        object.__setattr__(self, "path", encodable(self.path))
        object.__setattr__(self, "message", encodable(self.message))

    @classmethod
    def error(cls, code: str, path: str, message: str) -> Finding:
        return cls(Severity.ERROR, code, path, message)

    @classmethod
    def warning(cls, code: str, path: str, message: str) -> Finding:
        return cls(Severity.WARNING, code, path, message)


def errors_only(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


def raise_for_errors(findings: Iterable[Finding], *, field: str, reason: str) -> None:
    """Raise InvalidArgument carrying every ERROR finding as a field violation."""
    errors = errors_only(findings)
    if not errors:
        return
    first = errors[0]
    where = f" at {first.path}" if first.path else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise InvalidArgument(
        f"invalid {field}{where}: {first.message}{more}",
        reason=reason,
        metadata={"field": field, "findingCode": first.code},
        field_violations=[
            FieldViolation(field=field, description=f.message, reason=f.code, path=f.path)
            for f in errors
        ],
    )
