"""The foreground life of a stack the CLI starts (`crosslogic local up`, `crosslogic region up`):
bring it up, then hold the terminal until Ctrl-C, `kill` or a closed terminal, and stop everything
that was started on every way out except `--no-wait` success (the stack is then left running for
the matching `down`)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable

from crosslogic.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(message: str) -> None:
    print(f"[crosslogic] {message}", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_in_foreground(
    start: Callable[[], None],
    stop: Callable[[], None],
    *,
    no_wait: bool,
    waiting: str | None = None,
) -> int:
    """`start()` brings the stack up (and says so); then, unless `no_wait`, wait (saying `waiting`)
    until interrupted. `stop()` runs after an interruption, a failed start or any error; a start that
    fails with ConfigError or TimeoutError is one line on stderr and exit status 1."""
    # Set explicitly: a shell that starts us in the background leaves SIGINT ignored, and `kill` or a
    # closed terminal must stop what we started as surely as Ctrl-C.
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    keep_running = False
    try:
        start()
        if no_wait:
            keep_running = True
            return 0
        if waiting:
            say(waiting)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except (ConfigError, TimeoutError) as exc:
        print(f"crosslogic: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep_running:
            stop()
    return 0
