"""aiohttp, imported without the two default client SSL contexts it builds at import.

aiohttp.connector makes a verified and an unverified context at import time, each
loading the system CA store (~0.9 MB and ~18 ms apiece, paid by every sidecar). The
service never uses them: aiobotocore hands each connector its own context, which
loads the SDK's CA bundle. So while aiohttp is imported, loading the default verify
paths is skipped; those two contexts hold no CA certificates, and were anything to
use them, verification would fail (closed), never pass. Import this before anything
that imports aiohttp (aiobotocore does).
"""

from __future__ import annotations

import ssl
import sys

if "aiohttp.connector" not in sys.modules:  # already imported (tests): nothing to save
    _load_default_paths = ssl.SSLContext.set_default_verify_paths
    ssl.SSLContext.set_default_verify_paths = lambda self: None  # type: ignore[method-assign]
    try:
        import aiohttp.connector
    finally:
        ssl.SSLContext.set_default_verify_paths = _load_default_paths  # type: ignore[method-assign]

import aiohttp

__all__ = ["aiohttp"]
