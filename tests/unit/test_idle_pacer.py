"""The idle pacer (crosslogic/idle_pacer.py) and the router's idle intervals in the app config."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from crosslogic.config import RouterConfig
from crosslogic.idle_pacer import IdlePacer


async def _timed(pacer: IdlePacer, busy: bool = False) -> float:
    started = time.monotonic()
    await pacer.wait(busy)
    return time.monotonic() - started


async def test_busy_waits_short_idle_waits_long() -> None:
    pacer = IdlePacer(0.02, 0.3)
    assert await _timed(pacer, busy=True) < 0.15
    assert await _timed(pacer) >= 0.29


async def test_a_wake_ends_an_idle_wait_and_keeps_the_next_ones_short() -> None:
    pacer = IdlePacer(0.02, 5.0, linger_s=1.0)
    waiting = asyncio.create_task(_timed(pacer))
    await asyncio.sleep(0.05)
    pacer.wake()
    assert await asyncio.wait_for(waiting, 1.0) < 0.5
    assert await _timed(pacer) < 0.15  # still within linger_s of the wake
    assert pacer.recently_woken()


async def test_a_wake_before_the_wait_does_not_leak_into_a_later_idle_wait() -> None:
    pacer = IdlePacer(0.01, 0.2, linger_s=0.0)
    pacer.wake()
    await asyncio.sleep(0.01)
    assert await _timed(pacer) >= 0.19  # the old wake is cleared, not taken as a new one


def test_idle_shorter_than_busy_is_refused() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        IdlePacer(1.0, 0.5)


def test_router_idle_intervals_are_checked_against_staleness() -> None:
    assert RouterConfig().idle_engine_report_interval_s < RouterConfig().stale_after_s
    with pytest.raises(ValidationError, match="below stale_after_s"):
        RouterConfig(idle_engine_report_interval_s=5.0, stale_after_s=5.0)
    with pytest.raises(ValidationError, match="at least view_refresh_interval_s"):
        RouterConfig(view_refresh_interval_s=2.0, idle_view_refresh_interval_s=1.0)
