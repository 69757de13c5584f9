"""Frames of the limiter's stream and its mutual HMAC handshake (the stream itself: `wire.py`).

Why a handshake: the stream listens on the actor's node address, and its calls move money-relevant
state (a `settle` refunds tokens, an `admit` can fill a tenant's window). Before this, anyone who could
reach the port could call them. Now no call is read before the peer proved it holds the stream's secret.

The secret is per actor incarnation: `WireServer` draws 32 random bytes when the actor starts, and the
ingress replicas receive it together with the address from the actor's Ray method `stream_address`.
Ray's own channel is already the boundary this stream must not widen (whoever can make Ray calls can
call `admit`/`settle` on the actor directly), so handing the secret over it adds no new trust; in
exchange nothing has to be distributed or configured (no environment variable on every node, nothing
for the local stack to generate), and every actor restart rotates the secret. A replica re-asks
`stream_address` before every (re)connection, so it always holds the current one.

Handshake, right after the TCP connect, each frame at most `HANDSHAKE_MAX_BYTES`:
  server -> {"hello": 1, "nonce": Ns, "idle_s": idle timeout}
  client -> {"nonce": Nc, "proof": HMAC-SHA256(secret, CLIENT_LABEL | Ns | Nc)}
  server -> {"proof": HMAC-SHA256(secret, SERVER_LABEL | Ns | Nc)}   (only after checking the client's)
Nonces are 32 random bytes (hex). Both proofs cover both nonces, so neither can be replayed on another
connection; the two labels differ, so one side's proof is never valid as the other's (no reflection).
The proof is mutual: a process that took the port after the actor died cannot pose as the limiter,
since it cannot compute the server's proof. Digests are compared with `hmac.compare_digest`. The
server closes a connection that answers wrongly or not within `HANDSHAKE_TIMEOUT_S`, without a word.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeGuard

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
# An admission with a long key prefix and model name is under 2 KiB; a state answer too.
MAX_FRAME_BYTES = 1 << 20
# Handshake frames are ~200 bytes; an unauthenticated peer cannot make the server buffer more.
HANDSHAKE_MAX_BYTES = 1024
HANDSHAKE_TIMEOUT_S = 2.0
PROTOCOL = 1
CLIENT_LABEL = b"crosslogic-ratelimit-stream/v1/client"
SERVER_LABEL = b"crosslogic-ratelimit-stream/v1/server"
_NONCE = re.compile(r"^[0-9a-f]{64}$")


class HandshakeFailed(Exception):
    """The peer did not prove the secret (wrong proof, malformed or missing answer)."""


@dataclass(frozen=True)
class StreamEndpoint:
    """Where the stream is served and the secret that opens it; travels over Ray only."""

    host: str
    port: int
    secret: bytes = field(repr=False)


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > limit:
        raise ValueError(f"frame of {length} bytes")
    message = json.loads(await reader.readexactly(length))
    if not isinstance(message, dict):
        raise ValueError("frame is not an object")
    return message


def proof(secret: bytes, label: bytes, server_nonce: str, client_nonce: str) -> str:
    # Nonces are fixed-length hex, so the concatenation is unambiguous.
    return hmac.new(secret, label + server_nonce.encode() + client_nonce.encode(), hashlib.sha256).hexdigest()


def _valid_nonce(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and _NONCE.match(value) is not None


def _proved(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


async def server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes, idle_s: float
) -> None:
    """The server's half; raises `HandshakeFailed` (or EOF/ValueError) when the client fails it."""
    server_nonce = secrets.token_hex(32)
    writer.write(frame({"hello": PROTOCOL, "nonce": server_nonce, "idle_s": idle_s}))
    answer = await read_frame(reader, HANDSHAKE_MAX_BYTES)
    client_nonce = answer.get("nonce")
    if not _valid_nonce(client_nonce):
        raise HandshakeFailed("no valid client nonce")
    if not _proved(proof(secret, CLIENT_LABEL, server_nonce, client_nonce), answer.get("proof")):
        raise HandshakeFailed("wrong proof")
    writer.write(frame({"proof": proof(secret, SERVER_LABEL, server_nonce, client_nonce)}))
    await writer.drain()


async def client_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes) -> float:
    """The client's half; returns the server's idle timeout. Raises `HandshakeFailed` when the server
    does not prove the secret (EOF when the server refused us)."""
    hello = await read_frame(reader, HANDSHAKE_MAX_BYTES)
    server_nonce, idle_s = hello.get("nonce"), hello.get("idle_s")
    if hello.get("hello") != PROTOCOL or not _valid_nonce(server_nonce):
        raise HandshakeFailed(f"not a limiter stream (hello {hello.get('hello')!r})")
    if not isinstance(idle_s, int | float) or isinstance(idle_s, bool) or idle_s <= 0:
        raise HandshakeFailed(f"bad idle timeout {idle_s!r}")
    client_nonce = secrets.token_hex(32)
    writer.write(frame({"nonce": client_nonce,
                        "proof": proof(secret, CLIENT_LABEL, server_nonce, client_nonce)}))
    answer = await read_frame(reader, HANDSHAKE_MAX_BYTES)
    if not _proved(proof(secret, SERVER_LABEL, server_nonce, client_nonce), answer.get("proof")):
        raise HandshakeFailed("the server did not prove the secret")
    return float(idle_s)


class RefusalLog:
    """Counts refused connections by reason and warns at most once per peer address per interval:
    a scanner or a misconfigured client retrying in a loop must not flood the actor's log."""

    MAX_PEERS = 1024

    def __init__(self, interval_s: float = 60.0) -> None:
        self.counts: Counter[str] = Counter()
        self._interval_s = interval_s
        # peer host -> (last warning at, refusals since then)
        self._peers: dict[str, tuple[float, int]] = {}

    def refused(self, peer: str, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        now = time.monotonic()
        last, suppressed = self._peers.get(peer, (-float("inf"), 0))
        if now - last < self._interval_s:
            self._peers[peer] = (last, suppressed + 1)
            return
        if len(self._peers) >= self.MAX_PEERS and peer not in self._peers:
            self._peers.clear()  # bounded; at worst a peer is warned about once more
        self._peers[peer] = (now, 0)
        logger.warning(
            "rate-limit stream: refused a connection from %s: %s%s (and %d more since the last warning)",
            peer, reason, f" ({detail})" if detail else "", suppressed)
