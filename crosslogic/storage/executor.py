"""What repository functions accept: a connection (to share a transaction) or the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection acquired from a pool is a proxy, not an asyncpg.Connection subclass.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
Executor: TypeAlias = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


@asynccontextmanager
async def connection(db: Executor) -> AsyncIterator[Connection]:
    """A connection for statements that need one (savepoints): `db` itself, or one from the pool."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db
