"""The asyncpg pool, and start-up that fails fast with one line an operator can act on."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from crosslogic.errors import ConfigError
from crosslogic.secret_url import redact_url
from crosslogic.settings import Settings
from crosslogic.storage.embedded import start_embedded
from crosslogic.storage.migrations import apply_migrations

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
# Set by `crosslogic local up` for every process of its stack: only there may a server process fall
# back to an embedded PostgreSQL (a cluster's nodes would each start their own, silently split).
LOCAL_STACK_ENV = "CROSSLOGIC_LOCAL_STACK"
NO_DATABASE_URL = (
    "DATABASE_URL is required outside the local stack (`crosslogic local up` sets "
    f"{LOCAL_STACK_ENV}=1 and runs an embedded PostgreSQL): set DATABASE_URL=postgresql://..."
)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    return redact_url(dsn)


def dsn_with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path="/" + database))


def _explain(dsn: str, exc: BaseException) -> ConfigError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"PostgreSQL at {redact_dsn(dsn)} is unreachable: {reason}")


# What a connection attempt raises when the server is down, refuses us, or the DSN is wrong.
_CONNECT_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    socket.gaierror,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
)


async def connect_or_explain(dsn: str, *, timeout: float = CONNECT_TIMEOUT_S) -> asyncpg.Connection:
    """One connection, or `ConfigError` with a single clear line (never a driver traceback)."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout)
    except _CONNECT_FAILURES as exc:
        raise _explain(dsn, exc) from exc


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, timeout: float = CONNECT_TIMEOUT_S
) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, timeout=timeout, command_timeout=30
        )
    except _CONNECT_FAILURES as exc:
        raise _explain(dsn, exc) from exc
    assert pool is not None
    return pool


async def resolve_database_url(settings: Settings) -> str:
    """DATABASE_URL, or the embedded server under `$CROSSLOGIC_HOME/pgdata` (started if needed)."""
    if settings.database_url:
        return settings.database_url.get_secret_value()
    server = await asyncio.to_thread(
        start_embedded, settings.pgdata_dir, port=settings.embedded_pg_port
    )
    return server.dsn()


async def open_database(
    settings: Settings, *, migrate: bool = True, migrations_dir: Path | None = None
) -> asyncpg.Pool:
    """Start-up path of every process that needs PostgreSQL: reach it, migrate it, pool it.

    Raises `ConfigError` (one line) when the server is unreachable or a migration fails, or when
    DATABASE_URL is unset outside the local stack.
    """
    if not settings.database_url and os.environ.get(LOCAL_STACK_ENV) != "1":
        raise ConfigError(NO_DATABASE_URL)
    dsn = await resolve_database_url(settings)
    conn = await connect_or_explain(dsn)
    try:
        if migrate:
            # MigrationError is a ConfigError: its message is already the one line to show.
            applied = await apply_migrations(conn, migrations_dir)
            if applied:
                log.info("applied migrations: %s", ", ".join(m.filename for m in applied))
    finally:
        await conn.close()
    return await create_pool(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
