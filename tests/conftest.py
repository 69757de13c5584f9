"""Shared fixtures: a real PostgreSQL database per test session.

With DATABASE_URL set (CI points it at the machine's server) each session creates its own uniquely
named database on that server, through the `postgres` maintenance database, and drops it at the end;
engineers and CI runs sharing one server never see each other's rows. Without DATABASE_URL an embedded
PostgreSQL is started in a temporary directory (fsync off) and removed at the end.

Tests that use `database_url` / `db_pool` are marked `postgres` automatically.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from crosslogic.storage.embedded import start_embedded, stop_embedded
from crosslogic.storage.migrations import apply_migrations
from crosslogic.storage.pool import dsn_with_database

_POSTGRES_FIXTURES = {"database_url", "db_pool", "db_conn", "server_url", "empty_database_url"}


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without finalizing the interpreter once pytest has reported, with pytest's own status.

    A clean-clone run passed every test and then died in interpreter finalization (SIGSEGV in
    libpython on a native thread, `make: Segmentation fault`, exit 2): threads of native libraries
    the tests load in this process (Ray's core worker, gRPC, tokenizers) still calling into Python
    while it shuts down. Nothing is left to run by now: every fixture has been torn down and the
    summary printed."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
async def server_url() -> AsyncIterator[str]:
    """A DSN for some database on the PostgreSQL server the session uses (not yet isolated)."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    tmp = Path(tempfile.mkdtemp(prefix="crosslogic-pg-"))
    pgdata = tmp / "pgdata"
    server = await asyncio.to_thread(start_embedded, pgdata, durable=False)
    try:
        yield server.dsn()
    finally:
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(tmp, ignore_errors=True)


@asynccontextmanager
async def _temporary_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    maintenance = dsn_with_database(server_url, "postgres")
    admin = await asyncpg.connect(maintenance)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield dsn_with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(maintenance)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for this session (dropped at the end); `db_pool` migrates it."""
    async with _temporary_database(server_url, "crosslogic_test") as url:
        yield url


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """A brand-new database for one test (no migrations), e.g. to watch migrations from zero."""
    async with _temporary_database(server_url, "crosslogic_empty") as url:
        yield url


@pytest.fixture(scope="session")
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the session database with every migration in `migrations/` applied."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db_conn(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with db_pool.acquire() as conn:
        yield conn
