"""A start that fails (port in use, STS unreachable) undoes everything it did and exits 3."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kms_policy_service import Server
from tests.conftest import service_settings
from tests.support.kms_faults import KmsFaultInjector
from tests.support.process import ServiceProcess


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens there now


def test_a_port_in_use_exits_3_after_running_every_cleanup(
    faults: KmsFaultInjector, busy_port: int, tmp_path: Path
) -> None:
    proc = ServiceProcess(
        [
            "--listen",
            f"127.0.0.1:{busy_port}",
            "--kms-endpoint-url",
            faults.url,
            "--sts-endpoint-url",
            faults.url,
            "--audit-log",
            str(tmp_path / "audit.log"),
        ]
    )
    with pytest.raises(RuntimeError):
        proc.start(timeout=30)
    assert proc.wait(10) == 3
    messages = [str(r.get("message", "")) for r in proc.drain_logs()]
    assert any(m.startswith("could not start") for m in messages), messages
    assert "stopped" in messages  # shutdown ran: the exit stack's cleanups with it


async def test_an_unreachable_sts_stops_the_start_and_closes_what_was_opened(
    faults: KmsFaultInjector, closed_port: int, tmp_path: Path
) -> None:
    server = Server(
        service_settings(
            faults.url,
            sts_endpoint_url=f"http://127.0.0.1:{closed_port}",
            audit_log=str(tmp_path / "audit.log"),
            retry_max_attempts=1,
        )
    )
    with pytest.raises(Exception, match=r"ConnectionError|Connect"):
        await server.serve()
    assert server.audit is not None and not server.audit.is_open
    assert server.port == 0  # nothing was ever bound


async def test_a_port_in_use_in_process_raises_and_leaves_nothing_open(
    faults: KmsFaultInjector, busy_port: int, tmp_path: Path
) -> None:
    server = Server(
        service_settings(
            faults.url,
            listen=f"127.0.0.1:{busy_port}",
            audit_log=str(tmp_path / "audit.log"),
        )
    )
    with pytest.raises(RuntimeError, match=r"bind|Failed"):
        await server.serve()
    assert server.audit is not None and not server.audit.is_open
