"""GET /v1/responses/{id}/input_items: the input a stored response answered, as OpenAI lists it.

The items are the request's own `input` (a string is one user message), not the history a
`previous_response_id` carried in: that history is listed under the responses it came from. Each
item gets the shape the official client parses (`ResponseItem`): an id (its own, or one derived from
the response's id and the item's position, so the same item always has the same id and `after` /
`before` cursors stay valid), and a message's text as typed content parts.
"""

from __future__ import annotations

from typing import Any, Literal

from crosslogic.errors import InvalidRequestError
from crosslogic.responses.history import as_items
from crosslogic.responses.store import StoredResponse
from crosslogic.storage.pagination import check_page_size

Order = Literal["asc", "desc"]
# A message's string content becomes one part of this type, by who wrote it.
_TEXT_PART = {"assistant": "output_text"}


def _item(response_hex: str, index: int, item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    out.setdefault("id", f"msg_{response_hex}{index:08x}")
    out.setdefault("type", "message")
    if out["type"] == "message":
        content = out.get("content")
        if isinstance(content, str):
            out["content"] = [{"type": _TEXT_PART.get(out.get("role", "user"), "input_text"), "text": content}]
        out.setdefault("status", "completed")
    return out


def input_items(stored: StoredResponse) -> list[dict[str, Any]]:
    """Every input item of the response, oldest first, each with its id."""
    value = stored.request.get("input", [])
    raw = as_items(value if isinstance(value, str | list) else [])
    response_hex = stored.id.removeprefix("resp_")
    return [_item(response_hex, i, item) for i, item in enumerate(raw) if isinstance(item, dict)]


def listing(
    stored: StoredResponse, *, limit: int = 20, order: Order = "desc", after: str | None = None,
    before: str | None = None,
) -> dict[str, Any]:
    """One page as OpenAI answers it: `after` / `before` are item ids, in the page's order."""
    check_page_size(limit)
    items = input_items(stored)
    if order == "desc":
        items.reverse()
    ids = [item["id"] for item in items]
    for param, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            # Only the cursor's head goes back: the client chose it, and its length is bounded only by the URL's.
            raise InvalidRequestError(f"no input item {cursor[:64]!r} in this response", param=param)
    start = ids.index(after) + 1 if after is not None else 0
    end = ids.index(before) if before is not None else len(items)
    window = items[start:end]
    page = window[:limit]
    return {"object": "list", "data": page, "has_more": len(window) > limit,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}
