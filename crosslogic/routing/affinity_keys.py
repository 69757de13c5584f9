"""What affinity policies route on, computed in the ingress from a request's body: prefix block
hashes and a session hash.

The ingress holds text, not tokens (tokenising is the engine's work), so the prompt is rendered to
text and cut into fixed blocks of characters, hashed in a chain as vLLM chains its block hashes:
block i's hash covers blocks 0..i, so two prompts share hash i exactly when they share the first
i + 1 blocks. Only full blocks count (vLLM caches full blocks only), up to `max_chars` characters:
beyond a few thousand characters a shared prefix is already found.

The chain starts from the request's `cache_salt` (set by the ingress per tenant or key,
crosslogic/api/cache_salt.py): vLLM salts its block hashes with it, so prompts of two tenants never
share cache blocks, and routing them together would gain nothing.

A chat's anchor (its instructions and first turn) gets a hash of its own: prefix_aware places a
conversation by it, so every ingress replica sends all turns of a conversation to the same home.

Only hashes leave this module; the text it renders is dropped when it returns.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Mapping
from typing import Any

_SEP_ROLE = "\x1e"
_SEP_MESSAGE = "\x1f"


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text parts as they are, others by their JSON
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append(json.dumps(part, sort_keys=True, default=str))
        return "".join(parts)
    return "" if content is None else json.dumps(content, sort_keys=True, default=str)


_INSTRUCTION_ROLES = ("system", "developer")


def _render(endpoint: str, body: Mapping[str, Any], max_chars: int) -> tuple[str, int]:
    """(the leading `max_chars` characters of what the engine will prefill, as plain text; where
    the conversation's anchor ends in it, 0 for none).

    The anchor of a chat is its instructions and first turn: tools (chat templates render them
    ahead of the messages), system / developer messages, and the first other message. Every later
    request of the same conversation starts with it, and two conversations rarely share it.
    """
    if endpoint == "chat":
        pieces: list[str] = []
        size = 0
        anchor = 0
        tools = body.get("tools")
        if tools:
            text = json.dumps(tools, sort_keys=True, default=str)
            pieces.append(text)
            size += len(text)
        for message in body.get("messages") or ():
            if size >= max_chars:
                break
            if not isinstance(message, Mapping):
                continue
            role = message.get("role", "")
            text = f"{role}{_SEP_ROLE}{_content_text(message.get('content'))}{_SEP_MESSAGE}"
            pieces.append(text)
            size += len(text)
            if not anchor and role not in _INSTRUCTION_ROLES:
                anchor = min(size, max_chars)
        return "".join(pieces)[:max_chars], anchor
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            # A batch of prompts or token ids: the first prompt decides (batches are rare here).
            prompt = prompt[0] if prompt and isinstance(prompt[0], (str, list)) else prompt
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
        return text[:max_chars], 0
    return "", 0


def rendered_prefix(endpoint: str, body: Mapping[str, Any], max_chars: int) -> str:
    """The leading `max_chars` characters of what the engine will prefill, as plain text."""
    return _render(endpoint, body, max_chars)[0]


def _seed(body: Mapping[str, Any]) -> bytes:
    salt = body.get("cache_salt")
    return b"crosslogic-prefix\x00" + (str(salt).encode() if salt else b"")


def _chain(
    endpoint: str, body: Mapping[str, Any], block_chars: int, max_chars: int
) -> tuple[list[int], int | None, int]:
    """(chained hashes of the prompt's full blocks, first block first; the anchor's hash, None for a
    prompt without one; the anchor's length in characters).

    CRC-32 and Adler-32 run incrementally, so each block's pair is the checksum of the whole prefix
    so far (the chain) at a fraction of a cryptographic hash's cost (~30 blocks a request); 64 bits
    together. Not a defence against crafted collisions and need not be one: a collision only sends a
    request where another prefix went, within the load bound.
    """
    text, anchor = _render(endpoint, body, max_chars)
    seed = _seed(body)
    crc, adler = zlib.crc32(seed), zlib.adler32(seed)
    raw = text.encode("utf-8", "surrogatepass")
    ascii_only = len(raw) == len(text)  # byte offsets are character offsets: no per-block encode

    def encoded(start: int, end: int) -> bytes:
        return raw[start:end] if ascii_only else text[start:end].encode("utf-8", "surrogatepass")

    anchor_hash: int | None = None
    if anchor:
        head = encoded(0, anchor)
        anchor_hash = zlib.crc32(head, crc) << 32 | zlib.adler32(head, adler)
    hashes: list[int] = []
    for i in range(len(text) // block_chars):
        chunk = encoded(i * block_chars, (i + 1) * block_chars)
        crc, adler = zlib.crc32(chunk, crc), zlib.adler32(chunk, adler)
        hashes.append(crc << 32 | adler)
    return hashes, anchor_hash, anchor


def prefix_hashes(
    endpoint: str, body: Mapping[str, Any], *, block_chars: int, max_chars: int
) -> tuple[int, ...]:
    """Chained hashes of the prompt's full blocks of `block_chars` characters, first block first
    (what the engine simulator's prefix cache keys on, as vLLM keys on token blocks)."""
    return tuple(_chain(endpoint, body, block_chars, max_chars)[0])


def routing_prefix(
    endpoint: str, body: Mapping[str, Any], *, block_chars: int, max_chars: int
) -> tuple[int, ...]:
    """What prefix_aware routes on, shortest first: a chat's anchor, then the block hashes that
    reach past it (each covers the anchor too: the chain); a prompt without an anchor, its block
    hashes. The first is the ring key; the longest one this ingress remembers wins when it can."""
    hashes, anchor_hash, anchor_chars = _chain(endpoint, body, block_chars, max_chars)
    if anchor_hash is None:
        return tuple(hashes)
    return (anchor_hash, *hashes[anchor_chars // block_chars:])


def session_hash(body: Mapping[str, Any], header_value: str | None) -> int | None:
    """The session a request belongs to: the session header if sent, else OpenAI's `user` field.

    Salted like the prefixes, so two tenants' equal user ids are different sessions.
    """
    key = header_value if header_value else body.get("user")
    if not key or not isinstance(key, str):
        return None
    salt = body.get("cache_salt")
    return _digest(b"crosslogic-session\x00" + (str(salt).encode() if salt else b"") + b"\x00" + key.encode())
