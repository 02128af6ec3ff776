"""The docs say what the code does: every flag and metric is documented; the README opens
with the two commands and every RPC has a grpcurl example."""

from __future__ import annotations

import re
from pathlib import Path

from kms_policy_service import metrics
from kms_policy_service.cli import OPTIONS
from kmspolicy.v1 import policy_service_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_every_flag_and_environment_variable_is_documented() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for opt in OPTIONS:
        assert f"`{opt.flag}`" in text and f"`{opt.env}`" in text, opt.flag


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    names = {
        m._name.removesuffix("_total") if hasattr(m, "_name") else ""
        for m in vars(metrics).values()
        if type(m).__module__.startswith("prometheus_client.metrics")
    }
    for name in names:
        assert re.search(rf"`{name}(_total)?`", text), name


def test_readme_opens_with_the_two_commands_and_has_grpcurl_for_every_rpc() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
    for method in policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"].methods:
        assert f"$S/{method.name}" in text, method.name
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
