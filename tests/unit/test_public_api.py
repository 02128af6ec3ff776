"""The public names are the ones we mean to export."""

from __future__ import annotations

import kms_policy_client
import kms_policy_service


def test_client_exports() -> None:
    assert set(kms_policy_client.__all__) == {
        "PolicyClient",
        "PolicyClientSync",
        "ClientOptions",
        "TLSConfig",
        "Policy",
        "PutResult",
        "ValidationResult",
        "Finding",
        "Severity",
        "PolicyError",
        "NotFoundError",
        "InvalidRequestError",
        "LockoutError",
        "PreconditionFailedError",
        "EtagMismatchError",
        "PermissionDeniedError",
        "UnauthenticatedError",
        "RateLimitedError",
        "UnavailableError",
        "DeadlineExceededError",
        "InternalError",
        "Violation",
    }
    for name in kms_policy_client.__all__:
        assert getattr(kms_policy_client, name)


def test_service_exports() -> None:
    assert set(kms_policy_service.__all__) == {"Server", "Settings", "create_server", "__version__"}


def test_client_and_server_never_import_each_other() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in (root / "clients").rglob("*.py"):
        assert "kms_policy_service" not in path.read_text(), path
    for path in (root / "service").rglob("*.py"):
        assert "kms_policy_client" not in path.read_text(), path
