"""The CLI's foreground life of a stack (crosslogic/cli/foreground.py, used by `local up` and
`local region up`): stop runs on every way out but a `--no-wait` success."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from crosslogic.cli.foreground import STOP_SIGNALS, run_in_foreground
from crosslogic.errors import ConfigError


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_no_wait_leaves_the_stack_running() -> None:
    calls: list[str] = []
    assert run_in_foreground(lambda: calls.append("start"), lambda: calls.append("stop"), no_wait=True) == 0
    assert calls == ["start"]


def test_a_failed_start_is_one_line_and_stops_what_was_started(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    def start() -> None:
        calls.append("start")
        raise TimeoutError("engines not ready after 600s")

    assert run_in_foreground(start, lambda: calls.append("stop"), no_wait=False) == 1
    assert calls == ["start", "stop"]
    assert capsys.readouterr().err == "crosslogic: engines not ready after 600s\n"

    def buggy() -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):  # anything else propagates, after stopping
        run_in_foreground(buggy, lambda: calls.append("stop"), no_wait=False)
    assert calls == ["start", "stop", "stop"]


def test_a_config_error_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    def start() -> None:
        raise ConfigError("DATABASE_URL is not set")

    assert run_in_foreground(start, lambda: None, no_wait=True) == 1
    assert capsys.readouterr().err == "crosslogic: DATABASE_URL is not set\n"


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_ctrl_c_kill_or_a_closed_terminal_end_the_wait_and_stop(
    signum: signal.Signals, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[str] = []

    def start() -> None:
        calls.append("start")
        threading.Timer(0.1, os.kill, (os.getpid(), signum)).start()

    assert run_in_foreground(start, lambda: calls.append("stop"), no_wait=False, waiting="Ctrl-C stops it") == 0
    assert calls == ["start", "stop"]
    assert "[crosslogic] Ctrl-C stops it" in capsys.readouterr().out
