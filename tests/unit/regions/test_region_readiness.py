"""The `regions` entry of /ready, from a real RegionTable's view."""

from __future__ import annotations

from typing import Any

from heartbeat_support import heartbeat

from crosslogic.regions.readiness import regions_readiness
from crosslogic.regions.state import RegionTable


async def test_each_live_region_and_its_state() -> None:
    table = RegionTable(missed_heartbeats=3)
    table.report(heartbeat("us-east", interval_s=2.5), now=100.0)
    table.report(heartbeat("eu-west", interval_s=2.5), now=107.0)
    table.report(heartbeat("ap-south", interval_s=2.5), now=107.0, operator_drained=True)

    async def fetch() -> dict[str, dict[str, Any]]:
        return {name: view.model_dump(mode="json") for name, view in table.view(now=108.0).items()}

    status = await regions_readiness(fetch)
    assert status.ok
    assert status.detail == (
        "3 regions: ap-south drained (drained by an operator), eu-west active, "
        "us-east drained (no heartbeat for 8.0s (3 intervals of 2.5s))"
    )
    assert set(status.data) == {"us-east", "eu-west", "ap-south"}
    assert status.data["eu-west"]["replicas"][0]["waiting"] == 2

    async def none() -> dict[str, dict[str, Any]]:
        return {}

    assert (await regions_readiness(none)).detail == "no region reporting"


async def test_an_unreachable_router_leaves_readiness_to_the_router_entry() -> None:
    async def down() -> dict[str, dict[str, Any]]:
        raise ConnectionError("router actor restarting")

    status = await regions_readiness(down)
    assert status.ok and status.detail == "region view unavailable: ConnectionError" and status.data == {}
