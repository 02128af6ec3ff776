"""A configuration file that is reloaded when it changes (polled) or on request (SIGHUP).

A file that fails to load keeps the previous value and says why: a bad edit never
takes a running service down. Mounted ConfigMaps change by symlink swap, which
the (mtime, size) stamp of the path sees.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class ReloadableFile(Generic[T]):
    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        what: str,
        error: type[Exception],
        reloads: Any,  # a Counter with one label, result = ok | error
    ) -> None:
        self.path = path
        self._load = load
        self._what = what
        self._error = error
        self._reloads = reloads
        self.value: T = load(path)  # at start, a bad file is the caller's to handle
        self._stamp = self._stat()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Re-read the file; keep the previous value (and say why) if it is bad."""
        self._stamp = self._stat()
        try:
            value = self._load(self.path)
        except self._error as exc:
            self._reloads.labels("error").inc()
            log.error("%s not reloaded, keeping the previous one: %s", self._what, exc)
            return False
        self._reloads.labels("ok").inc()
        self.value = value
        log.info("%s reloaded", self._what)
        return True

    def reload_if_changed(self) -> bool:
        return self._stat() != self._stamp and self.reload()

    async def watch(self, interval: float) -> None:
        """Poll for changes until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
