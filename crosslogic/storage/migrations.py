"""Numbered SQL migrations, applied exactly once under a PostgreSQL advisory lock.

Files are `migrations/NNNN_name.sql`, applied in version order, each in its own transaction together
with its row in `schema_migrations`. Several replicas may start at once: the advisory lock serialises
them, and whoever comes second finds everything applied. A file edited after it was applied is refused,
because the database no longer matches what the code believes the schema is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from crosslogic.errors import ConfigError

log = logging.getLogger(__name__)

# Arbitrary but fixed: every CrossLogic process agrees on it, nothing else in the database uses it.
MIGRATION_LOCK_KEY = 0x43_4C_4D_49_47  # "CLMIG"
MIGRATIONS_DIR_ENV = "CROSSLOGIC_MIGRATIONS_DIR"
_FILE_PATTERN = re.compile(r"^(\d{4})_([A-Za-z0-9_-]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(ConfigError):
    """The migrations on disk and in the database disagree, or one failed to apply."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name


def default_migrations_dir() -> Path:
    """The `migrations/` folder of the checkout this module was loaded from (source or editable)."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


def checksum_of(sql: str) -> str:
    # Line endings are normalised so a Windows checkout does not look like an edit.
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


def discover_migrations(directory: Path | None = None) -> list[Migration]:
    folder = directory or default_migrations_dir()
    if not folder.is_dir():
        raise MigrationError(
            f"migrations folder {folder} not found; pass it explicitly or set {MIGRATIONS_DIR_ENV}"
        )
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_PATTERN.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migrations {found[version].filename} and {path.name} share version {version:04d}"
            )
        sql = path.read_text(encoding="utf-8")
        found[version] = Migration(version, match.group(2), path, sql, checksum_of(sql))
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    conn: asyncpg.Connection, directory: Path | None = None
) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied (empty when up to date)."""
    migrations = discover_migrations(directory)
    # Session-level lock on this connection: held across the per-migration transactions below.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = {
            row["version"]: row
            for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        _verify_applied(migrations, applied)
        done: list[Migration] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            await _apply_one(conn, migration)
            done.append(migration)
        return done
    finally:
        # A lost connection released the lock with it; unlocking would only mask the real error.
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


def _verify_applied(migrations: list[Migration], applied: dict[int, asyncpg.Record]) -> None:
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None and row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {migration.filename} was edited after it was applied "
                f"(checksum {row['checksum'][:12]} in the database, {migration.checksum[:12]} on disk); "
                "restore the original file and add a new numbered migration instead"
            )
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        # A newer release may already have migrated this database (rolling upgrade): not an error.
        log.warning("database has migrations this code does not know: %s", unknown)


async def _apply_one(conn: asyncpg.Connection, migration: Migration) -> None:
    log.info("applying migration %s", migration.filename)
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"migration {migration.filename} failed: {type(exc).__name__}: {exc}"
        ) from exc


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
