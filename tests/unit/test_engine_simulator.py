"""The engine simulator (crosslogic/engine/simulator.py): its queue, batching, prefix cache and events,
on asyncio's real clock with fast speeds, and how a model selects it (only explicitly)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.base import CHUNK, ENGINE_FIRST_MS, ERROR, RESPONSE, USAGE
from crosslogic.engine.factory import build_engine
from crosslogic.engine.simulator import SimulatorEngine
from crosslogic.settings import Settings

SYSTEM = "You answer questions about the warehouse inventory, politely and briefly. " * 40  # ~3 000 chars


def sim_config(**sim: Any) -> ModelDeploymentConfig:
    settings = {"prefill_tokens_per_s": 20_000, "decode_tokens_per_s": 500, **sim}
    return ModelDeploymentConfig.model_validate({
        "served_name": "sim", "source": "simulated", "engine": {"kind": "simulator", "simulator": settings}})


def chat(user: str, *, stream: bool = True, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "stream": stream, "max_tokens": max_tokens, "cache_salt": "tenant-x", **extra}


async def run(engine: SimulatorEngine, body: dict[str, Any], request_id: str = "r") -> tuple[list[Any], float]:
    """Events, and the time to the first one (s)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    first_at = None
    events = []
    async for event in engine.generate("chat", body, request_id):
        if first_at is None:
            first_at = loop.time() - started
        events.append(event)
    return events, first_at or 0.0


async def test_stream_events_are_those_of_the_real_engine() -> None:
    engine = SimulatorEngine(sim_config())
    await engine.start()
    try:
        events, _ = await run(engine, chat("hi", stream_options={"include_usage": True}))
        assert all(e[0] == CHUNK for e in events)
        assert ENGINE_FIRST_MS in events[0][3]
        text = "".join(e[1] for e in events)
        assert text.endswith("data: [DONE]\n\n")
        payloads = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
        assert payloads[-1]["usage"]["completion_tokens"] == 8 and payloads[-1]["choices"] == []
        assert events[-1][2] == {"prompt_tokens": payloads[-1]["usage"]["prompt_tokens"], "completion_tokens": 8}
        (kind, response), (usage_kind, usage) = [e async for e in engine.generate("chat", chat("x", stream=False), "n")]
        assert (kind, usage_kind) == (RESPONSE, USAGE) and usage["completion_tokens"] == 8
        assert response["choices"][0]["message"]["content"].count("tok") == 8
    finally:
        await engine.shutdown()


async def test_prefix_cache_hits_skip_prefill_and_are_counted() -> None:
    engine = SimulatorEngine(sim_config(prefill_tokens_per_s=10_000))
    await engine.start()
    try:
        _, cold = await run(engine, chat("first question"))
        stats = engine.stats()
        assert stats.prefix_cache_hits == 0 and stats.prefix_cache_queries > 700
        _, warm = await run(engine, chat("second question"))
        stats = engine.stats()
        # The system prompt's full blocks were cached: ~750 tokens hit, the user's few not.
        assert stats.prefix_cache_hits >= 700
        assert warm < cold / 3, (cold, warm)
        # The next turn sends the answer back: it was cached with the prompt, as vLLM keeps output blocks.
        body = chat("second question", max_tokens=64)
        await run(engine, body)
        before = engine.stats()
        body["messages"].append({"role": "assistant", "content": "tok " * 64})
        body["messages"].append({"role": "user", "content": "and a third"})
        await run(engine, body)
        after = engine.stats()
        new_queries = after.prefix_cache_queries - before.prefix_cache_queries
        assert after.prefix_cache_hits - before.prefix_cache_hits >= new_queries - 16 - 8
        stats = after
        # Another tenant (salt) shares nothing.
        await run(engine, chat("first question", cache_salt="tenant-y"))
        assert engine.stats().prefix_cache_hits == stats.prefix_cache_hits
    finally:
        await engine.shutdown()


async def test_batch_limit_queues_and_reports() -> None:
    engine = SimulatorEngine(sim_config(max_batch=2, decode_tokens_per_s=200))
    await engine.start()
    try:
        tasks = [asyncio.create_task(run(engine, chat(f"q{i}", max_tokens=20), f"r{i}")) for i in range(5)]
        await asyncio.sleep(0.02)
        stats = engine.stats()
        assert (stats.running, stats.waiting, stats.in_flight) == (2, 3, 5)
        assert 0 < stats.kv_cache_usage < 1
        await asyncio.gather(*tasks)
        assert engine.stats().running == 0 and engine.unfinished_requests() == 0
    finally:
        await engine.shutdown()


async def test_heterogeneous_speed_by_replica_rank() -> None:
    config = sim_config(speed_factors=[1.0, 0.25], decode_tokens_per_s=400)
    fast, slow = SimulatorEngine(config, replica_rank=0), SimulatorEngine(config, replica_rank=1)
    assert (fast.speed_factor, slow.speed_factor) == (1.0, 0.25)
    await fast.start()
    await slow.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await run(fast, chat("a", max_tokens=20))
        fast_s = loop.time() - started
        started = loop.time()
        await run(slow, chat("a", max_tokens=20))
        assert loop.time() - started > 2.5 * fast_s
    finally:
        await fast.shutdown()
        await slow.shutdown()


async def test_refusals_and_cancellation() -> None:
    engine = SimulatorEngine(sim_config(max_model_len=256))
    await engine.start()
    try:
        events, _ = await run(engine, chat("long"))
        assert events[0][0] == ERROR and events[0][1]["error"]["code"] == "context_length_exceeded"
        [(kind, payload)] = [e async for e in engine.generate("embeddings", {"input": "x"}, "e")]
        assert kind == ERROR and payload["status"] == 400
        stream = engine.generate("chat", {"messages": [{"role": "user", "content": "hi"}], "stream": True,
                                          "max_tokens": 200}, "c")
        await anext(stream)
        await stream.aclose()  # the client hung up
        await asyncio.sleep(0.02)
        assert engine.stats().running == 0 and engine.stats().in_flight == 0
    finally:
        await engine.shutdown()


def test_simulator_only_when_configured() -> None:
    assert ModelDeploymentConfig.model_validate({"served_name": "m", "source": "x"}).engine.kind == "vllm"
    engine = build_engine(sim_config(), Settings.from_env(), progress=print)
    assert isinstance(engine, SimulatorEngine)
    with pytest.raises(ValueError):
        ModelDeploymentConfig.model_validate({"served_name": "m", "source": "x", "engine": {"kind": "fake"}})
