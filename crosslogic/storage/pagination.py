"""Keyset pagination, OpenAI style (`limit`, `after`, `has_more`), shared by every list endpoint.

Keyset rather than OFFSET: pages stay stable while rows are added, and cost does not grow with depth.
Lists are ordered by (created_at, id); the cursor is the id of the last row of the previous page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Literal, TypeVar
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from crosslogic.errors import InvalidRequestError

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: pass `last_id` as `after` to get the next one."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: UUID | int | None = None
    last_id: UUID | int | None = None


def check_page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequestError(
            f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}", param="limit"
        )
    return limit


def to_page(
    rows: Sequence[asyncpg.Record], limit: int, build: Callable[[asyncpg.Record], T]
) -> Page[T]:
    """`rows` were fetched with LIMIT limit + 1: the extra row only tells whether more exist."""
    items = [build(r) for r in rows[:limit]]
    ids = [r["id"] for r in rows[:limit]]
    return Page[T](
        data=items,
        has_more=len(rows) > limit,
        first_id=ids[0] if ids else None,
        last_id=ids[-1] if ids else None,
    )


def unknown_cursor(after: object) -> InvalidRequestError:
    return InvalidRequestError(f"no item with id {after} to page after", param="after")
