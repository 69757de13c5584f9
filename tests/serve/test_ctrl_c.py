"""Ctrl-C on `make run` in a terminal: `crosslogic local up` in the foreground of a pseudo-terminal,
the terminal's interrupt character once the banner is up; within 30 s the CLI has exited and no process
of its stack (Ray's, the engines', HAProxy, the embedded PostgreSQL) is left.

The pty is the CLI's controlling terminal and the CLI is its foreground process group, as under a
shell: the kernel delivers SIGINT to that whole group, which is how Ray's processes used to get it too.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from crosslogic.localstack.ray_cluster import cluster_processes, free_port
from tests.serve import test_local_stack
from tests.serve.conftest import process_title
from tests.serve.test_local_stack import CLI, _alive

# test_local_stack.py's module fixture (a private CROSSLOGIC_HOME and config), shared by name.
local_home = test_local_stack.local_home

STOP_WITHIN_S = 30.0


def _read(fd: int, until: float, want: bytes, seen: bytearray) -> bool:
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal (exited)
            return want in seen
        if not chunk:
            return want in seen
        seen += chunk
        if want in seen:
            return True
    return False


@pytest.fixture
def terminal_cli(local_home: tuple[Path, dict[str, str], Path]) -> Iterator[tuple[int, int, Path]]:
    home, env, config_path = local_home
    argv = [CLI, "local", "up", "--config", str(config_path), "--ray-port", str(free_port()),
            "--dashboard-port", str(free_port()), "--timeout", "600"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.execve(CLI, argv, env)
    try:
        yield pid, fd, home
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_ctrl_c_in_the_terminal_stops_everything(terminal_cli: tuple[int, int, Path]) -> None:
    pid, fd, home = terminal_cli
    output = bytearray()
    assert _read(fd, time.monotonic() + 900, b"Ctrl-C stops everything", output), output[-3000:].decode(errors="replace")
    state = json.loads((home / "local-stack.json").read_text())
    running = cluster_processes(state["cluster_id"])
    postmaster = psutil.Process(int((home / "pgdata" / "postmaster.pid").read_text().split()[0]))
    titles = {process_title(p) for p in running}
    assert any("raylet" in t for t in titles) and any("Engine" in t or "engine" in t for t in titles), titles

    interrupted = time.monotonic()
    os.write(fd, b"\x03")  # the terminal's interrupt character (VINTR): SIGINT to its foreground group
    status = None
    while time.monotonic() - interrupted < STOP_WITHIN_S:
        _read(fd, time.monotonic() + 0.5, b"\0never", output)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    took = time.monotonic() - interrupted
    print(f"\nCLI exited {took:.1f}s after Ctrl-C (status {status})\n" + output[-600:].decode(errors="replace"))
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, output[-3000:].decode(errors="replace")
    leftovers = [(p.pid, process_title(p)) for p in [*running, *cluster_processes(state["cluster_id"]), postmaster]
                 if _alive(p)]
    assert leftovers == [], f"left running {took:.1f}s after Ctrl-C: {leftovers}"
    assert took < STOP_WITHIN_S
    assert not (home / "local-stack.json").exists()
