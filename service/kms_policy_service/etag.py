"""Policy etags: SHA-256 of the canonical JSON form, so KMS re-indentation changes nothing."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

# A policy read back from KMS may hold an unpaired surrogate escape (\ud800) that
# another tool stored: strict UTF-8 cannot encode what json.loads makes of it, and a key
# without an etag could never be updated through the service. "surrogatepass" gives
# such text a stable encoding and leaves every other text's bytes (and etag) unchanged.
_ENCODING_ERRORS = "surrogatepass"


def canonical_json(document: Any) -> str:
    """Sorted keys, no insignificant whitespace: the form etags are computed over."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def etag_of_document(document: Any) -> str:
    return hashlib.sha256(canonical_json(document).encode("utf-8", _ENCODING_ERRORS)).hexdigest()


@functools.lru_cache(maxsize=128)  # hot keys are read again and again; bounded memory
def policy_etag(text: str) -> str:
    """The etag of a policy text: of its canonical JSON, or of the raw text if not JSON."""
    try:
        document = json.loads(text)
    except ValueError:
        return hashlib.sha256(text.encode("utf-8", _ENCODING_ERRORS)).hexdigest()
    return etag_of_document(document)
