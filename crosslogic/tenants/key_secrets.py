"""API-key secrets: generation, digest and constant-time verification.

A key looks like `sk-cl-AbCd1234<rest>`: `sk-cl-` plus 43 url-safe characters (256 random bits).
The first 8 random characters, with the `sk-cl-` marker, form the public lookup prefix stored in
clear; the database keeps only the SHA-256 digest of the whole secret. A fast digest is right here
(unlike passwords): the secret is high-entropy, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_MARKER = "sk-cl-"
LOOKUP_CHARS = 8
_RANDOM_BYTES = 32
# 22 url-safe characters carry 128 bits; anything shorter cannot be one of ours.
_WELL_FORMED = re.compile(r"^sk-cl-[A-Za-z0-9_-]{30,200}$")


def generate_secret() -> str:
    return KEY_MARKER + secrets.token_urlsafe(_RANDOM_BYTES)


def lookup_prefix(secret: str) -> str:
    return secret[: len(KEY_MARKER) + LOOKUP_CHARS]


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def is_well_formed(secret: str) -> bool:
    return _WELL_FORMED.fullmatch(secret) is not None


def verify(secret: str, expected_digest: bytes) -> bool:
    return secrets.compare_digest(digest(secret), expected_digest)
