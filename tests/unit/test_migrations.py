"""Migrations: applied to an empty database, exactly once under concurrency, edits refused."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from crosslogic.storage.migrations import (
    MigrationError,
    applied_versions,
    apply_migrations,
    default_migrations_dir,
    discover_migrations,
)


async def test_every_migration_applies_to_an_empty_database(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        applied = await apply_migrations(conn)
        on_disk = discover_migrations()
        assert [m.version for m in applied] == [m.version for m in on_disk]
        assert await applied_versions(conn) == [m.version for m in on_disk]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        assert {"tenants", "api_keys", "models", "audit_log", "schema_migrations"} <= tables
        columns = {
            r["column_name"]: r["data_type"]
            for r in await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'api_keys'"
            )
        }
        assert columns["secret_digest"] == "bytea"
        assert columns["scopes"] == "ARRAY"
        # A second run is a no-op.
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()


async def test_concurrent_startups_apply_each_migration_once(empty_database_url: str) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        applied_counts = sorted(len(r) for r in results)
        total = len(discover_migrations())
        assert applied_counts == [0, 0, 0, 0, total]
        rows = await conns[0].fetch("SELECT version, count(*) AS n FROM schema_migrations GROUP BY 1")
        assert all(r["n"] == 1 for r in rows) and len(rows) == total
    finally:
        for c in conns:
            await c.close()


async def test_edited_applied_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(default_migrations_dir(), folder)
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn, folder)
        first = sorted(folder.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- sneaky edit\n")
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await apply_migrations(conn, folder)
        # The lock was released despite the failure: an untouched folder still checks out.
        assert await apply_migrations(conn) == []
    finally:
        await conn.close()


async def test_failing_migration_rolls_back_and_names_the_file(empty_database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_ok.sql").write_text("CREATE TABLE a (id int);")
    (folder / "0002_broken.sql").write_text("CREATE TABLE b (id int); SELECT * FROM missing_table;")
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(MigrationError, match=r"0002_broken\.sql failed"):
            await apply_migrations(conn, folder)
        assert await applied_versions(conn) == [1]
        assert await conn.fetchval("SELECT to_regclass('b')") is None
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_core.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover_migrations(tmp_path)


def test_missing_folder_is_explained(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="not found"):
        discover_migrations(tmp_path / "nope")
