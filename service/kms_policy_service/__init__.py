"""kms-policy-service: an async gRPC service fronting the AWS KMS key-policy operations.

The public names are loaded on first use, so importing one module of the package
(errors, validation...) does not load the server, gRPC reflection or Prometheus.
Its modules are the service's own parts, not an API: the package face is `__all__`.
"""

import importlib as _importlib
import typing as _typing

from kms_policy_service._version import __version__

if _typing.TYPE_CHECKING:
    from kms_policy_service.server import Server, create_server
    from kms_policy_service.settings import Settings

__all__ = ["Server", "Settings", "__version__", "create_server"]

_LAZY = {
    "Server": "kms_policy_service.server",
    "create_server": "kms_policy_service.server",
    "Settings": "kms_policy_service.settings",
}


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value
