"""Reading a Responses event stream as the engine sends it to the ingress (SSE text chunks).

The engine ends the stream with the relay's end marker (`STREAM_END`, which is what OpenAI's other
streams end with): the relay then settles at once instead of waiting for the transport's
end-of-stream. OpenAI's Responses streams carry no such marker, so the ingress removes it.
"""

from __future__ import annotations

import json
from typing import Any

STREAM_END = "data: [DONE]\n\n"
CREATED = ("response.created",)
# The last event of a response that ran to its end (`incomplete`: it hit max_output_tokens).
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
# What the relay writes when the engine fails mid-stream (crosslogic/api/relay.py).
_RELAY_ERROR = 'data: {"error"'


def find_response(chunk: str, types: tuple[str, ...]) -> dict[str, Any] | None:
    """The response object carried by the last event in `chunk` whose type is one of `types`."""
    if not any(f"event: {kind}\n" in chunk for kind in types):
        return None  # the common case (a text delta) costs a substring test, no parsing
    found: dict[str, Any] | None = None
    for block in chunk.split("\n\n"):
        head, _, data = block.partition("\ndata: ")
        if head.startswith("event: ") and head[len("event: "):] in types:
            response = json.loads(data).get("response")
            if isinstance(response, dict):
                found = response
    return found


def is_failure(chunk: str) -> bool:
    return _RELAY_ERROR in chunk or "event: error\n" in chunk


def without_end(chunk: str) -> str:
    return chunk[: -len(STREAM_END)] if chunk.endswith(STREAM_END) else chunk
