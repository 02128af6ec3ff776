"""The guardrails file (`--guardrails`): loaded at start, reloaded on change or SIGHUP.

Without a file there are no guardrails. A missing, unreadable or bad file at start
stops the service (exit 2); on reload it keeps the previous guardrails and logs why.
"""

from __future__ import annotations

from pathlib import Path

from kms_policy_service import metrics
from kms_policy_service.reloading import ReloadableFile
from kms_policy_service.validation.guardrails import NO_GUARDRAILS, Guardrails, GuardrailsError


def load_guardrails(path: Path) -> Guardrails:
    try:
        text = path.read_text()
    except OSError as exc:
        raise GuardrailsError(f"{path}: {exc.strerror}") from exc
    return Guardrails.parse(text, source=str(path))


class GuardrailsFile:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = (
            None
            if path is None
            else ReloadableFile(
                path,
                load_guardrails,
                what="guardrails",
                error=GuardrailsError,
                reloads=metrics.guardrails_reloads_total,
            )
        )

    @property
    def current(self) -> Guardrails:
        return NO_GUARDRAILS if self._file is None else self._file.value

    def reload(self) -> bool:
        return self._file is not None and self._file.reload()

    async def watch(self, interval: float) -> None:
        if self._file is not None:
            await self._file.watch(interval)
