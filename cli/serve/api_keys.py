"""API keys: 256 random bits, shown once; the database keeps only their SHA-256.

A key is ``bdk_`` followed by 43 URL-safe characters (32 bytes from ``secrets``). Because a key is uniformly random
and that long, a plain SHA-256 is the right hash: there is nothing to guess, so a slow password hash (bcrypt,
argon2) would only slow every request. A request's key is hashed and looked up by its hash; the stored hash is
then compared with ``hmac.compare_digest``. Keys never appear in logs or error messages.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "bdk_"
KEY_BYTES = 32
HINT_CHARS = 10  # "bdk_" + 6 characters: enough to tell keys apart in `backdrop accounts list`
_KEY_SHAPE = re.compile(r"bdk_[A-Za-z0-9_-]{20,100}")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_hint(key: str) -> str:
    return key[:HINT_CHARS] + "..."


def well_formed(key: str) -> bool:
    """Cheap shape check before any database work (anything else is answered 401 at once)."""
    return bool(_KEY_SHAPE.fullmatch(key))
