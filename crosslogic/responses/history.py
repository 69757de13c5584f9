"""A conversation as Responses input items, for `previous_response_id`.

A response continues another by carrying that response's conversation (its input, history
included) and output before its own input: what OpenAI does, and what vLLM's Responses layer reads
when the items arrive as `input` (it renders output items as assistant turns and tool calls).
Instructions are not carried over: each request's own apply.
"""

from __future__ import annotations

from typing import Any

from crosslogic.responses.store import StoredResponse


def as_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A request's `input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def conversation(previous: StoredResponse | None, value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items a request answers: the previous response's conversation and output, then `value`."""
    if previous is None:
        return as_items(value)
    output = previous.response.get("output") or []
    return [*previous.input_items, *output, *as_items(value)]
