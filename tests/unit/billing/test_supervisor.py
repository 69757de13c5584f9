"""The supervisor: a crashing loop is logged with its traceback, counted and restarted; never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from crosslogic.metering.metrics import Metrics
from crosslogic.supervisor import supervise


async def test_crashes_are_logged_counted_restarted_and_alerted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    healthy = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"boom {runs}")
        healthy.set()
        await asyncio.Event().wait()

    metrics = Metrics("test")
    with caplog.at_level(logging.ERROR):
        task = asyncio.create_task(supervise("loop", body, metrics=metrics, backoff_base_s=0.01,
                                             backoff_max_s=0.02, alert_after_failures=3))
        await asyncio.wait_for(healthy.wait(), 5)
    assert metrics.get("loop_crashes_total") == 3
    crashes = [r for r in caplog.records if r.getMessage() == "supervised loop loop crashed"]
    assert len(crashes) == 3 and all(r.exc_info for r in crashes)
    assert any(getattr(r, "alert", None) == "loop_crashing" for r in caplog.records)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
