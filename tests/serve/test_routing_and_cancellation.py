"""Routing across two engine replicas, cancellation, and surviving router / replica failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import httpx
import openai

from tests.serve.conftest import CHAT_MODEL, ServeStack, process_title

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _wait_idle(stack: ServeStack, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    replicas: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        replicas = stack.engine_replicas()
        if replicas and all(r["running"] == 0 and r["waiting"] == 0 and r["in_flight"] == 0 for r in replicas.values()):
            return replicas
        time.sleep(0.1)
    raise AssertionError(f"engines not idle after {timeout_s}s: {replicas}")


async def test_requests_spread_over_both_replicas(serve_stack: ServeStack) -> None:
    client = openai.AsyncOpenAI(base_url=serve_stack.openai_base, api_key=serve_stack.api_key, max_retries=0)

    async def one() -> str:
        resp = await client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=24)
        return resp.headers["x-crosslogic-replica"]

    served = Counter(await asyncio.gather(*(one() for _ in range(16))))
    await client.close()
    assert len(served) == 2, served
    # Least loaded with two choices among two replicas: concurrent requests split close to evenly.
    assert min(served.values()) >= 5, served


async def test_client_cancel_mid_stream_aborts_engine_request(serve_stack: ServeStack) -> None:
    _wait_idle(serve_stack, timeout_s=120)  # whatever earlier tests left running
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(3):
            async with http.stream(
                "POST",
                f"{serve_stack.openai_base}/chat/completions",
                json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 1500, "stream": True},
                headers=serve_stack.auth_headers,
            ) as resp:
                assert resp.status_code == 200
                seen = 0
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        seen += 1
                    if seen >= 5:
                        break  # hang up mid-stream
        # While generating, the engine was busy; after the hang-ups every count returns to zero.
    replicas = _wait_idle(serve_stack, timeout_s=5.0)
    assert all(r["running"] == 0 for r in replicas.values())


async def test_a_stream_whose_engine_freezes_ends_with_engine_stalled(serve_stack: ServeStack) -> None:
    """A stuck engine (its EngineCore processes stopped with SIGSTOP mid-stream) must not hold a
    client's stream open forever: after `ingress.engine_stream_idle_timeout_s` of silence the stream
    ends with an `engine_stalled` error event and the engine request is aborted."""
    import psutil

    from crosslogic.localstack.ray_cluster import cluster_processes

    idle_s = float(serve_stack.config["applications"][0]["args"]["ingress"]["engine_stream_idle_timeout_s"])
    _wait_idle(serve_stack, timeout_s=120)
    cores = [p for p in cluster_processes(serve_stack.cluster.cluster_id) if "EngineCore" in process_title(p)]
    assert cores, "no EngineCore process found"
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    after_freeze: list[str] = []
    async with httpx.AsyncClient(timeout=idle_s * 3, headers=serve_stack.auth_headers) as http:
        async with http.stream("POST", f"{serve_stack.openai_base}/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            while not (await anext(lines)).startswith("data: {"):
                pass
            for proc in cores:
                proc.suspend()
            frozen_at = time.monotonic()
            try:
                async for line in lines:
                    if line:
                        after_freeze.append(line)
            finally:
                for proc in cores:
                    with contextlib.suppress(psutil.Error):
                        proc.resume()
            ended_after = time.monotonic() - frozen_at
    print(f"stream ended {ended_after:.1f}s after the freeze ({len(after_freeze)} lines meanwhile)")
    assert "engine_stalled" in after_freeze[-1], after_freeze[-3:]
    assert "data: [DONE]" not in after_freeze
    assert idle_s - 1 <= ended_after <= idle_s + 15, ended_after
    # Resumed, the engine has nothing left running: the request was aborted, not left generating.
    _wait_idle(serve_stack, timeout_s=60)


def test_router_actor_restart_rebuilds_from_reports(serve_stack: ServeStack, ray_driver: Any) -> None:
    router = ray_driver.get_actor("crosslogic-router", namespace="crosslogic")
    before = ray_driver.get(router.ping.remote())
    ray_driver.kill(router, no_restart=False)
    # Requests keep flowing while the router is down and after it returns.
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=serve_stack.api_key, max_retries=0) as client:
        for _ in range(3):
            assert client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4).choices
    # Every engine (the embedding model's too, which `engine_replicas` does not list) re-reports
    # within its report interval (0.5 s) of the router's return; readiness needs all of them.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if (ray_driver.get(router.ping.remote(), timeout=2) != before and len(serve_stack.engine_replicas()) == 2
                    and serve_stack.ready()["ready"]):
                break
        except Exception:
            pass
        time.sleep(0.2)
    assert ray_driver.get(router.ping.remote()) != before, "router actor did not restart"
    assert len(serve_stack.engine_replicas()) == 2, "engines did not re-report to the restarted router"
    ready = serve_stack.ready()
    assert ready["ready"] is True, ready


async def test_replica_death_is_retried_before_first_token(serve_stack: ServeStack, ray_driver: Any) -> None:
    """Kill one engine replica; requests routed to it before Serve notices are retried elsewhere."""
    _wait_idle(serve_stack, timeout_s=120)
    replica_ids = list(serve_stack.engine_replicas())
    victim_id = replica_ids[0]
    victim = None
    for actor in ray_driver.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and victim_id in actor["name"] and "engine-" in actor["name"]:
            victim = ray_driver.get_actor(actor["name"], namespace="serve")
    assert victim is not None, f"replica actor {victim_id} not found"
    ray_driver.kill(victim, no_restart=True)
    client = openai.AsyncOpenAI(base_url=serve_stack.openai_base, api_key=serve_stack.api_key, max_retries=0)
    results = await asyncio.gather(
        *(client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4) for _ in range(8)),
        return_exceptions=True,
    )
    await client.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    # Serve replaces the replica; wait for two healthy engines again so later tests see the full stack.
    def replaced() -> bool:
        replicas = serve_stack.engine_replicas()
        return len(replicas) == 2 and victim_id not in replicas

    # A new vLLM engine starts in ~30 s here on the EPYC machine; CI on the slower Xeon once saw no
    # replacement within 300 s (its cause unknown: no logs). Wait longer, and say what Serve saw.
    killed_at = time.monotonic()
    deadline = killed_at + 600
    while time.monotonic() < deadline and not replaced():
        time.sleep(2)
    if not replaced():
        import psutil

        engine_cores = [p.pid for p in psutil.process_iter() if "EngineCore" in process_title(p)]
        raise AssertionError(f"no replacement after 600s: router view {serve_stack.engine_replicas()}; "
                             f"EngineCore processes {engine_cores}; serve status:\n{serve_stack.cluster.status()}")
    print(f"replica replaced in {time.monotonic() - killed_at:.0f}s")
