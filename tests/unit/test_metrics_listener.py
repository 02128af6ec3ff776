"""The /metrics listener over real sockets: half-sent requests (slowloris) are closed after
the request timeout and their threads end; connections beyond the bound are closed at
once; a normal scrape works meanwhile."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kms_policy_service import metrics
from tests.support.waiting import wait_for

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: never ends


def request_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "metrics-request")


def refusals(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "kms_policy_metrics_listener_refusals_total", {"reason": reason}
    )
    return value or 0.0


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (EOF or reset); False while it is held."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


@pytest.fixture
def listener() -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def start(**kw: Any) -> Any:
        server = metrics.serve("127.0.0.1", 0, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()
    wait_for(
        lambda: request_threads() == 0, 10, "the test's connection threads to end", interval=0.02
    )


def half_sent(port: int, clients: list[socket.socket]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(HALF_REQUEST)
    clients.append(sock)
    return sock


def test_a_scrape_is_served_while_half_sent_requests_hold_their_threads(
    listener: Callable[..., Any], clients: list[socket.socket]
) -> None:
    server = listener(request_timeout=30.0)
    port = server.server_address[1]
    held = [half_sent(port, clients) for _ in range(30)]
    wait_for(lambda: request_threads() == 30, 10, "the 30 held connections' threads", interval=0.02)
    assert "kms_policy_metrics_listener_refusals_total" in scrape(port)
    assert not any(closed_by_server(s) for s in held)


def test_half_sent_requests_are_closed_after_the_timeout_and_their_threads_end(
    listener: Callable[..., Any], clients: list[socket.socket]
) -> None:
    timeout = 0.5
    server = listener(request_timeout=timeout)
    port = server.server_address[1]
    before = refusals("timeout")
    connected: dict[socket.socket, float] = {}
    for _ in range(30):
        started = time.monotonic()
        connected[half_sent(port, clients)] = started
    closed_at: dict[socket.socket, float] = {}

    def all_closed() -> bool:
        for sock in connected.keys() - closed_at.keys():
            if closed_by_server(sock):
                closed_at[sock] = time.monotonic()
        return len(closed_at) == len(connected)

    wait_for(all_closed, 10, "the server to close the half-sent requests", interval=0.02)
    early = [
        closed_at[s] - connected[s] for s in connected if closed_at[s] - connected[s] < timeout
    ]
    assert early == []  # closed by the timeout, not at once
    wait_for(lambda: request_threads() == 0, 10, "their threads to end", interval=0.02)
    assert refusals("timeout") - before == 30
    scrape(port)  # still serving


def test_connections_beyond_the_bound_are_closed_at_once_and_scrapes_resume(
    listener: Callable[..., Any], clients: list[socket.socket]
) -> None:
    server = listener(request_timeout=30.0, max_connections=4)
    port = server.server_address[1]
    held = [half_sent(port, clients) for _ in range(4)]
    wait_for(lambda: request_threads() == 4, 10, "the 4 held connections' threads", interval=0.02)
    before = refusals("too_many")
    extra = half_sent(port, clients)
    wait_for(lambda: closed_by_server(extra), 10, "the 5th connection to be closed", interval=0.02)
    assert refusals("too_many") - before == 1
    assert request_threads() == 4
    assert not any(closed_by_server(s) for s in held)
    for sock in held:
        sock.close()
    wait_for(
        lambda: request_threads() == 0, 10, "the held connections' threads to end", interval=0.02
    )
    scrape(port)
