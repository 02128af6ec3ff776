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
        "GuardrailViolationError",
        "GuardrailViolation",
        "OutOfScopeError",
        "EtagMismatchError",
        "PermissionDeniedError",
        "UnauthenticatedError",
        "RateLimitedError",
        "UnavailableError",
        "DeadlineExceededError",
        "InternalError",
        "Violation",
        "PreconditionViolation",
        "QuotaViolation",
        "Resource",
    }
    for name in kms_policy_client.__all__:
        assert getattr(kms_policy_client, name)


def test_every_public_name_of_the_client_is_in_its_all_and_its_modules_are_private() -> None:
    # httpx's test: whatever the package face holds without a leading underscore is
    # exported on purpose (a public module would be an accident of an import).
    import kms_policy_client._cli  # the one module __init__ does not import itself

    public = [name for name in vars(kms_policy_client) if not name.startswith("_")]
    assert kms_policy_client.__all__ == sorted(public, key=str.casefold)


def test_every_client_module_is_private() -> None:
    from pathlib import Path

    package = Path(kms_policy_client.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    assert modules and all(m.startswith("_") for m in modules), modules


def test_the_clients_public_names_say_they_come_from_the_package() -> None:
    for name in kms_policy_client.__all__:
        assert getattr(kms_policy_client, name).__module__ == "kms_policy_client", name


def test_service_exports() -> None:
    assert set(kms_policy_service.__all__) == {"Server", "Settings", "create_server", "__version__"}


def test_client_and_server_never_import_each_other() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in (root / "clients").rglob("*.py"):
        assert "kms_policy_service" not in path.read_text(), path
    for path in (root / "service").rglob("*.py"):
        assert "kms_policy_client" not in path.read_text(), path
