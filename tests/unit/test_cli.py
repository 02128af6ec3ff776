"""Flags and KMS_POLICY_* environment variables become one validated Settings."""

from __future__ import annotations

import pytest

from kms_policy_service.cli import EXIT_CONFIG, OPTIONS, main, settings_from
from kms_policy_service.ratelimit import DEFAULT_OPERATION_RATES, Rate
from kms_policy_service.settings import Settings, SettingsError


def test_defaults_are_sidecar_safe() -> None:
    s = settings_from([], {})
    assert s == Settings()
    assert s.listen == "127.0.0.1:50051" and s.listen_is_loopback


def test_every_flag_has_an_environment_variable_with_the_prefix() -> None:
    assert all(o.env.startswith("KMS_POLICY_") for o in OPTIONS)
    assert len({o.env for o in OPTIONS}) == len(OPTIONS)


def test_flags_win_over_environment_and_environment_over_aws_region() -> None:
    env = {
        "KMS_POLICY_LISTEN": "127.0.0.1:7000",
        "AWS_REGION": "eu-west-1",
        "KMS_POLICY_REGION": "eu-central-1",
    }
    s = settings_from(["--listen", "127.0.0.1:7001"], env)
    assert (s.listen, s.region) == ("127.0.0.1:7001", "eu-central-1")
    assert settings_from([], {"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"


def test_kms_rate_limits_are_repeatable_and_merge_with_the_defaults() -> None:
    s = settings_from(
        ["--kms-rate-limit", "PutKeyPolicy=2:3", "--kms-rate-limit", "GetKeyPolicy=50"], {}
    )
    assert s.kms_rate_limits["PutKeyPolicy"] == Rate(2, 3)
    assert s.kms_rate_limits["GetKeyPolicy"] == Rate(50, 50)
    assert s.kms_rate_limits["DescribeKey"] == DEFAULT_OPERATION_RATES["DescribeKey"]
    env = settings_from([], {"KMS_POLICY_KMS_RATE_LIMIT": "PutKeyPolicy=1:1,ListKeyPolicies=4"})
    assert env.kms_rate_limits["ListKeyPolicies"] == Rate(4, 4)


def test_the_read_coalescing_window_is_3_ms_unless_set() -> None:
    assert settings_from([], {}).read_coalescing_window == 0.003
    assert settings_from(["--read-coalescing-window", "0"], {}).read_coalescing_window == 0
    env = {"KMS_POLICY_READ_COALESCING_WINDOW": "0.01"}
    assert settings_from([], env).read_coalescing_window == 0.01


def test_optional_rates_can_be_turned_off() -> None:
    s = settings_from(["--key-write-rate-limit", "off", "--caller-rate-limit", "3:6"], {})
    assert s.key_write_rate_limit is None and s.caller_rate_limit == Rate(3, 6)


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "nohost"],
        ["--log-level", "LOUD"],
        ["--kms-rate-limit", "Encrypt=5"],
        ["--kms-rate-limit", "PutKeyPolicy"],
        ["--shutdown-grace", "-1"],
        ["--rate-limit-backend", "http://x"],
        ["--local-kms", "--max-concurrency", "0"],
        ["--read-coalescing-window", "0.051"],  # no configuration holds a read for long
        ["--read-coalescing-window", "-0.001"],
    ],
)
def test_bad_settings_are_refused(argv: list[str]) -> None:
    with pytest.raises(SettingsError):
        settings_from(argv, {})


def test_bad_configuration_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "LOUD"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("kms-policy-service: ") and err.count("\n") == 1
