"""Start-up of the storage layer: fail-fast messages, open_database, embedded server, `crosslogic migrate`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from crosslogic.errors import ConfigError
from crosslogic.settings import Settings
from crosslogic.storage.embedded import start_embedded, stop_embedded
from crosslogic.storage.migrations import discover_migrations
from crosslogic.storage.pool import connect_or_explain, open_database, redact_dsn


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_unreachable_server_is_one_clear_line_without_password() -> None:
    dsn = f"postgresql://app:hunter2@127.0.0.1:{dead_port()}/db"
    with pytest.raises(ConfigError) as caught:
        await connect_or_explain(dsn, timeout=2)
    message = str(caught.value)
    assert "\n" not in message and "unreachable" in message
    assert "hunter2" not in message and "app:***@127.0.0.1" in message


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p@h:1/d") == "postgresql://u:***@h:1/d"
    assert redact_dsn("postgresql://u@h/d") == "postgresql://u@h/d"


async def test_open_database_migrates_and_pools(empty_database_url: str, tmp_path: Path) -> None:
    pool = await open_database(Settings(home=tmp_path, database_url=empty_database_url, db_pool_max=3))
    try:
        count = await pool.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(discover_migrations())
        assert pool.get_max_size() == 3
    finally:
        await pool.close()


async def test_failing_migration_stops_startup_with_one_line(
    empty_database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_bad.sql").write_text("CREATE TABLE oops (;")
    with pytest.raises(ConfigError) as caught:
        await open_database(
            Settings(home=tmp_path, database_url=empty_database_url), migrations_dir=folder
        )
    assert "0001_bad.sql failed" in str(caught.value) and "\n" not in str(caught.value)


async def test_embedded_server_is_reused_and_keeps_data(tmp_path: Path) -> None:
    pgdata = tmp_path / "home" / "pgdata"
    port = dead_port()
    try:
        first = await asyncio.to_thread(start_embedded, pgdata, port=port, durable=False)
        assert first.port == port and first.host == "127.0.0.1"
        again = await asyncio.to_thread(start_embedded, pgdata)
        assert again.port == port  # a running server is reused, not started twice
        conn = await asyncpg.connect(first.dsn())
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await conn.close()
        await asyncio.to_thread(stop_embedded, pgdata)
        restarted = await asyncio.to_thread(start_embedded, pgdata, durable=False)
        conn = await asyncpg.connect(restarted.dsn())
        assert await conn.fetchval("SELECT x FROM kept") == 42
        await conn.close()
    finally:
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(tmp_path / "home", ignore_errors=True)


async def test_embedded_refuses_a_foreign_directory(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "something.txt").write_text("not a database")
    with pytest.raises(ConfigError, match="neither empty nor a PostgreSQL data directory"):
        await asyncio.to_thread(start_embedded, pgdata)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crosslogic.cli.main", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_migrate_command(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}
    code, out, _ = await run_cli("migrate", "--status", "--json", env=env)
    assert code == 0 and not any(m["applied"] for m in json.loads(out)["migrations"])
    code, out, _ = await run_cli("migrate", "--json", env=env)
    result = json.loads(out)
    assert code == 0 and len(result["applied_now"]) == len(discover_migrations())
    code, out, _ = await run_cli("migrate", env=env)
    assert code == 0 and "already up to date" in out


async def test_migrate_command_unreachable_database() -> None:
    env = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead_port()}/x"}
    code, _, err = await run_cli("migrate", env=env)
    assert code == 1 and err.count("\n") == 1 and "unreachable" in err and "Traceback" not in err


async def refused(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return True
    await conn.close()
    return False


def without_password(dsn: str, password: str) -> str:
    return dsn.replace(f":{password}@", "@")


async def test_embedded_server_requires_its_generated_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = home / "pgdata"
    try:
        server = await asyncio.to_thread(start_embedded, pgdata, durable=False)
        secret_file = home / "pg-password"
        assert secret_file.read_text().strip() == server.password and len(server.password) >= 40
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert server.password not in repr(server)
        conn = await asyncpg.connect(server.dsn())
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
        await conn.close()
        assert await refused(without_password(server.dsn(), server.password))
        assert await refused(server.dsn().replace(server.password, "x" + server.password[1:]))
        # Another local user's role, created without a password, cannot log in either.
        conn = await asyncpg.connect(server.dsn())
        await conn.execute("CREATE ROLE someone LOGIN")
        await conn.close()
        assert await refused(f"postgresql://someone@127.0.0.1:{server.port}/postgres")
    finally:
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(home, ignore_errors=True)


async def test_a_trusting_data_directory_is_upgraded_in_place(tmp_path: Path) -> None:
    """A data directory (and its running server) from a version that trusted every local user."""
    from crosslogic.storage import embedded

    home = tmp_path / "home"
    pgdata = (home / "pgdata").resolve()
    home.mkdir()
    port = dead_port()
    run_as = embedded._prepare_system_user(pgdata)
    old_dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        # What the previous version did: initdb --auth=trust, start on 127.0.0.1.
        embedded._package().initdb(
            ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"],
            pgdata=pgdata, timeout=60, **embedded._run_as_kwargs(run_as),
        )
        embedded._pg_ctl(["-w", "-o", f"-h 127.0.0.1 -p {port} -k '' -c fsync=off", "start"], pgdata, run_as)
        conn = await asyncpg.connect(old_dsn)
        await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        await conn.close()

        server = await asyncio.to_thread(start_embedded, pgdata)
        assert server.port == port  # the running server was upgraded, not replaced
        assert await refused(old_dsn)
        assert (home / "pg-password").stat().st_mode & 0o777 == 0o600
        conn = await asyncpg.connect(server.dsn())
        assert await conn.fetchval("SELECT x FROM kept") == 7
        await conn.close()

        # And it stays so across a restart, with the same password.
        await asyncio.to_thread(stop_embedded, pgdata)
        again = await asyncio.to_thread(start_embedded, pgdata, durable=False)
        assert again.password == server.password
        assert await refused(without_password(again.dsn(), again.password))
        conn = await asyncpg.connect(again.dsn())
        assert await conn.fetchval("SELECT x FROM kept") == 7
        await conn.close()
    finally:
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(home, ignore_errors=True)


async def test_a_missing_password_file_is_one_clear_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pgdata = home / "pgdata"
    try:
        await asyncio.to_thread(start_embedded, pgdata, durable=False)
        await asyncio.to_thread(stop_embedded, pgdata)
        (home / "pg-password").unlink()
        with pytest.raises(ConfigError, match="pg-password, which is missing"):
            await asyncio.to_thread(start_embedded, pgdata, durable=False)
    finally:
        await asyncio.to_thread(stop_embedded, pgdata)
        shutil.rmtree(home, ignore_errors=True)


async def test_a_server_without_database_url_refuses_to_start_outside_the_local_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CROSSLOGIC_LOCAL_STACK", raising=False)
    with pytest.raises(ConfigError) as caught:
        await open_database(Settings(home=tmp_path, database_url=None))
    message = str(caught.value)
    assert message.startswith("DATABASE_URL is required outside the local stack") and "\n" not in message
    assert not (tmp_path / "pgdata").exists()  # no embedded server was started
