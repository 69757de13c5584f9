"""The missed-heartbeat count travels with each report (the router actor has no app config)."""

from __future__ import annotations

from heartbeat_support import heartbeat

from crosslogic.regions.state import RegionTable


def test_each_report_carries_the_missed_heartbeat_count() -> None:
    table = RegionTable(missed_heartbeats=3)
    table.report(heartbeat("eu", interval_s=2.0), now=100.0, missed_heartbeats=5)
    table.report(heartbeat("us", interval_s=2.0), now=100.0)
    views = table.view(now=107.0)  # 7 s: past 3 intervals, within 5
    assert views["eu"].state == "active"
    assert views["us"].state == "drained" and views["us"].reason == "no heartbeat for 7.0s (3 intervals of 2s)"
    later = table.view(now=110.5)
    assert later["eu"].state == "drained" and later["eu"].reason == "no heartbeat for 10.5s (5 intervals of 2s)"
