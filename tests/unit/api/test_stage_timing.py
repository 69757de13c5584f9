"""The Server-Timing header: stages add up, the engine's own time is split from the transit."""

from __future__ import annotations

import time

from crosslogic.api.timing import StageTimer, parse_server_timing
from crosslogic.engine.base import ENGINE_FIRST_MS


def test_stages_split_engine_time_from_transit() -> None:
    timer = StageTimer()
    time.sleep(0.01)
    timer.mark("auth")
    timer.mark("body")
    timer.dispatched()
    time.sleep(0.03)
    timer.first_event({ENGINE_FIRST_MS: 20.0})
    stages = parse_server_timing(timer.header())
    assert list(stages) == ["auth", "body", "engine", "transit", "total"]
    assert stages["auth"] >= 10.0
    assert stages["engine"] == 20.0
    assert 10.0 <= stages["transit"] < 30.0
    assert stages["total"] >= stages["auth"] + stages["engine"] + stages["transit"] - 0.05


def test_engine_time_never_exceeds_the_wait() -> None:
    # The replica's clock is its own: a figure above what the ingress waited (a clock step, a bug)
    # is capped so transit never goes negative.
    timer = StageTimer()
    timer.dispatched()
    timer.first_event({ENGINE_FIRST_MS: 10_000.0})
    stages = timer.stages
    assert stages["engine"] <= stages["total"] and stages["transit"] == 0.0


def test_no_engine_figure_means_no_split() -> None:
    timer = StageTimer()
    timer.mark("admit")
    timer.dispatched()
    timer.first_event(None)
    assert set(timer.stages) == {"admit", "upstream", "total"}


def test_repeated_stage_accumulates() -> None:
    timer = StageTimer()
    time.sleep(0.005)
    timer.mark("auth")
    timer.mark("body")
    time.sleep(0.005)
    timer.mark("auth")
    assert timer.stages["auth"] >= 10.0 and timer.stages["body"] < 5.0


def test_a_wait_after_the_first_event_extends_total_and_overlapped_work_does_not() -> None:
    # The overlapped admission: its answer may still be awaited after the first event (that wait
    # counts, in `admit` and `total`); its own round trip ran alongside and is only noted.
    timer = StageTimer()
    timer.mark("admit")
    timer.dispatched()
    timer.first_event({ENGINE_FIRST_MS: 1.0})
    before = timer.stages["total"]
    time.sleep(0.01)
    timer.mark("admit")
    timer.note("admit_overlapped", 2.5)
    stages = parse_server_timing(timer.header())
    assert stages["admit"] >= 10.0 and stages["total"] >= before + 10.0
    assert stages["admit_overlapped"] == 2.5
    timer.note("ignored", None)
    assert "ignored" not in timer.stages
