"""Run the real `kms-policy-service` in a subprocess and learn its port from its JSON log."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any


def loopback_service(*, on: str) -> list[str]:
    """Flags for a service on a free loopback port whose KMS and STS are at `on`."""
    return ["--listen", "127.0.0.1:0", "--kms-endpoint-url", on, "--sts-endpoint-url", on]


class ServiceProcess:
    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "kms_policy_service", "--log-format", "json", *args]
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            ["service", "clients", "protos", self.env.get("PYTHONPATH", "")]
        )
        self.logs: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        self.proc = subprocess.Popen(
            self.args, env=self.env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.next_record(deadline - time.monotonic())
            if record is None:
                break
            if record.get("message") == "serving":
                self.port = int(record["port"])
                return self
        self.stop()
        raise RuntimeError(f"service did not start; logs: {self.logs}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def next_record(self, timeout: float) -> dict[str, Any] | None:
        try:
            line = self._lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            return None
        if line is None:
            return None
        try:
            record = json.loads(line)
        except ValueError:
            record = {"message": line.rstrip()}
        self.logs.append(record)
        return dict(record)

    def drain_logs(self) -> list[dict[str, Any]]:
        while self.next_record(0.01) is not None:
            pass
        return self.logs

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
