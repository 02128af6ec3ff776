"""A sidecar without an authorization or guardrails file never imports a YAML parser;
configuring either file still parses YAML."""

from __future__ import annotations

from tests.unit.test_imports import loaded_by


def test_the_authz_and_guardrails_modules_load_no_yaml_until_a_file_is_parsed() -> None:
    modules = loaded_by(
        "import kms_policy_service.authz, kms_policy_service.validation.guardrails, "
        "kms_policy_service.server, kms_policy_service.cli; "
        "kms_policy_service.authz.Authorizer(None); "
        "kms_policy_service.guardrail_file.GuardrailsFile(None)"
    )
    assert "kms_policy_service.server" in modules
    assert sorted(m for m in modules if m == "yaml" or m.startswith("yaml.")) == []


def test_an_authz_file_in_yaml_is_still_parsed() -> None:
    modules = loaded_by(
        "from kms_policy_service.authz import AuthzPolicy; "
        'p = AuthzPolicy.parse(\'rules:\\n  - {callers: [a], actions: ["*"], keys: ["*"]}\\n\'); '
        "assert p.rules"
    )
    assert "yaml" in modules


def test_a_guardrails_file_in_yaml_is_still_parsed() -> None:
    modules = loaded_by(
        "from kms_policy_service.validation.guardrails import Guardrails; "
        "g = Guardrails.parse('public: deny\\n'); "
        "assert g.public == 'deny'"
    )
    assert "yaml" in modules
