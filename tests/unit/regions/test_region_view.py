"""What the region view carries for routing: the secret generation the ingress signs with, the cards."""

from __future__ import annotations

from crosslogic.engine.base import ModelCard
from crosslogic.regions.protocol import Heartbeat, VersionSet
from crosslogic.regions.state import RegionTable

CARD = ModelCard(served_name="smol", task="generate", max_model_len=2048, source="hf:smol")


def heartbeat() -> Heartbeat:
    return Heartbeat(region="eu", gateway_url="https://eu.example:8443", models=["smol"], cards=[CARD],
                     versions=VersionSet(ray="1", vllm="1", torch="1", crosslogic="1"), interval_s=2.0, agent_id="a")


def test_view_carries_generation_and_cards() -> None:
    table = RegionTable()
    table.report(heartbeat(), now=100.0)
    view = table.view(now=100.5)["eu"]
    assert view.secret_generation == 1 and view.cards == [CARD]
    table.report(heartbeat(), now=101.0, secret_generation=3)
    dumped = table.view(now=101.0)["eu"].model_dump(mode="json")  # what the router actor hands out
    assert dumped["secret_generation"] == 3 and dumped["cards"][0]["served_name"] == "smol"
