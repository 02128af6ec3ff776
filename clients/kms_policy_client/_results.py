"""Small immutable results the client returns."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "Policy", "PutResult", "Severity", "ValidationResult"]


@dataclass(frozen=True)
class Policy:
    key_arn: str
    policy_name: str
    policy: str  # as KMS returns it
    etag: str

    @property
    def document(self) -> dict[str, Any]:
        """The policy parsed (a new dict each time: change it freely)."""
        value = json.loads(self.policy)
        if not isinstance(value, dict):
            raise ValueError("the policy is not a JSON object")
        return value


@dataclass(frozen=True)
class PutResult:
    key_arn: str
    policy_name: str
    etag: str  # of what was written (or would be, with validate_only)


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    code: str
    path: str
    message: str


@dataclass(frozen=True)
class ValidationResult:
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors
