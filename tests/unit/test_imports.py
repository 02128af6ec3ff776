"""Importing one module of the package loads that module's needs, not the whole service."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "kms_policy_service.server",
    "kms_policy_service.servicer",
    "grpc_reflection.v1alpha",
    "grpc_health.v1",
    "prometheus_client",
    "yaml",
    "aiobotocore",
    "botocore",
)


def loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "module",
    [
        "kms_policy_service.errors",
        "kms_policy_service.settings",
        "kms_policy_service.validation",
        "kms_policy_service.backend",
    ],
)
def test_a_leaf_module_loads_no_server_reflection_prometheus_yaml_or_sdk(module: str) -> None:
    modules = loaded_by(f"import {module}")
    assert module in modules
    assert sorted(m for m in modules if m.startswith(HEAVY)) == []


def test_the_package_face_is_lazy_but_complete() -> None:
    assert "kms_policy_service.server" not in loaded_by("import kms_policy_service")
    assert "kms_policy_service.server" in loaded_by("from kms_policy_service import Server")


def test_the_service_package_face_holds_only_its_all() -> None:
    code = (
        "import kms_policy_service as p; "
        "print(' '.join(sorted(n for n in vars(p) if not n.startswith('_'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    import kms_policy_service

    assert set(out.stdout.split()) <= set(kms_policy_service.__all__)
    for name in kms_policy_service.__all__:
        assert getattr(kms_policy_service, name)
