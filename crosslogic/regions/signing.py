"""HMAC-SHA256 request signing between a region and the control plane.

One secret per region, derived from the control plane's master secret and the region's secret
generation (rotating a region's secret bumps its generation; nothing secret is stored in PostgreSQL).
The same secret signs both directions, so the signed text names the direction (`purpose`): a captured
heartbeat can never be replayed as a call to a gateway, nor the reverse.

Signed text: purpose, region, METHOD, path, timestamp, nonce and the body's SHA-256, one per line.
A verifier refuses a timestamp outside ±`skew_s` and a nonce it has seen within the window (the nonce
store is the caller's: PostgreSQL on the control plane, shared by every ingress replica; memory in a
gateway replica).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

# agent -> control plane (registration, heartbeats); control plane -> regional gateway (requests).
Purpose = Literal["agent", "gateway"]

REGION_HEADER = "x-crosslogic-region"
TIMESTAMP_HEADER = "x-crosslogic-timestamp"
NONCE_HEADER = "x-crosslogic-nonce"
SIGNATURE_HEADER = "x-crosslogic-signature"

DEFAULT_SKEW_S = 30.0
_SIGNATURE_PREFIX = "v1="
MAX_NONCE_CHARS = 64
REGION_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"

RefusalReason = Literal[
    "missing_signature", "malformed_signature", "unknown_region", "bad_signature", "clock_skew",
    "replayed_nonce", "version_mismatch", "region_disabled",
]


class SignatureRefused(Exception):
    """A signed request that must be refused (401); `reason` goes to the audit row."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def derive_region_secret(master_secret: bytes, region: str, generation: int) -> bytes:
    """The region's signing secret: what `crosslogic regions create` / `rotate` hands the operator."""
    return hmac.new(master_secret, f"crosslogic-region:{region}:{generation}".encode(), hashlib.sha256).digest()


def encode_secret(secret: bytes) -> str:
    """How a region secret travels in an environment variable (CROSSLOGIC_REGION_SECRET)."""
    return secret.hex()


def decode_secret(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("a region secret is 64 hex characters") from None
    if len(secret) != 32:
        raise ValueError("a region secret is 64 hex characters")
    return secret


def _canonical(purpose: Purpose, region: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return "\n".join(
        (purpose, region, method.upper(), path, timestamp, nonce, hashlib.sha256(body).hexdigest())
    ).encode()


def _mac(secret: bytes, canonical: bytes) -> str:
    return _SIGNATURE_PREFIX + hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def sign(
    secret: bytes,
    *,
    purpose: Purpose,
    region: str,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request (`path` without scheme and host, query included)."""
    timestamp = str(int(now if now is not None else time.time()))
    nonce = nonce or secrets.token_hex(16)
    signature = _mac(secret, _canonical(purpose, region, method, path, timestamp, nonce, body))
    return {REGION_HEADER: region, TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}


@dataclass(frozen=True)
class SignedHeaders:
    region: str
    timestamp: int
    nonce: str
    signature: str


def parse_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """The signature headers of a request, or SignatureRefused (missing or malformed)."""
    values = {h: headers.get(h) for h in (REGION_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)}
    missing = [h for h, v in values.items() if not v]
    if missing:
        raise SignatureRefused("missing_signature", f"missing signature header(s): {', '.join(missing)}")
    region, timestamp, nonce, signature = (str(values[h]) for h in values)
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureRefused("malformed_signature", f"{TIMESTAMP_HEADER} must be unix seconds")
    if len(nonce) > MAX_NONCE_CHARS or not nonce.isascii() or not nonce.isprintable():
        raise SignatureRefused(
            "malformed_signature", f"{NONCE_HEADER} must be at most {MAX_NONCE_CHARS} printable ASCII characters"
        )
    if len(region) > 64 or not region.isascii() or not region.isprintable():
        raise SignatureRefused("malformed_signature", f"{REGION_HEADER} is not a region name")
    if not signature.startswith(_SIGNATURE_PREFIX) or len(signature) != len(_SIGNATURE_PREFIX) + 64:
        raise SignatureRefused("malformed_signature", f"{SIGNATURE_HEADER} must be v1=<64 hex>")
    return SignedHeaders(region=region, timestamp=int(timestamp), nonce=nonce, signature=signature)


def verify(
    secret: bytes,
    signed: SignedHeaders,
    *,
    purpose: Purpose,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
    skew_s: float = DEFAULT_SKEW_S,
) -> None:
    """Raise SignatureRefused unless the signature is right and the timestamp within ±skew_s.
    (The nonce is the caller's to claim afterwards: only a verified request may spend one.)"""
    expected = _mac(secret, _canonical(purpose, signed.region, method, path, str(signed.timestamp), signed.nonce, body))
    if not hmac.compare_digest(expected, signed.signature):
        raise SignatureRefused("bad_signature", "the request signature does not match")
    now = now if now is not None else time.time()
    if abs(now - signed.timestamp) > skew_s:
        raise SignatureRefused(
            "clock_skew", f"request timestamp is {now - signed.timestamp:+.0f}s from ours (window ±{skew_s:.0f}s)"
        )


class NonceStore(Protocol):
    async def claim(self, region: str, nonce: str, timestamp: int) -> bool:
        """True the first time (region, nonce) is seen within the skew window; False for a replay."""
        ...


class MemoryNonceStore:
    """Nonces seen by one process, kept for twice the skew window and bounded in number: a nonce
    older than the window is refused by its timestamp anyway. Per process: right for a gateway
    replica (a replay to another replica could only repeat a generation the control plane meters)."""

    def __init__(self, skew_s: float = DEFAULT_SKEW_S, max_entries: int = 200_000) -> None:
        self._keep_s = 2 * skew_s
        self._max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def claim(self, region: str, nonce: str, timestamp: int) -> bool:
        now = time.monotonic()
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at <= self._keep_s and len(self._seen) < self._max_entries:
                break
            del self._seen[key]
        key = (region, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
