"""prefix_aware on real engines: a model's own `router.policy`, through the real request router.

The session stack's chat model routes with the default policy, and switching it would restart its
engines; so this test deploys the chat model once more, as its own small Serve application (two
real SmolLM2 engine replicas, about 1.2 GB each), built by the production builder from a model
config that names prefix_aware, and calls it through a deployment handle from this process: the
request router (deployments/request_router.py) runs here, with the router actor's view, as it runs
in an ingress replica. Each conversation has a cache salt of its own, so a turn sent to the replica
that did not serve the previous ones finds nothing cached (the cached_tokens figure would show it).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

import pytest

from crosslogic.config import AppConfig, ModelDeploymentConfig
from crosslogic.engine.base import RESPONSE
from crosslogic.routing.hints import RoutingHints
from tests.serve.conftest import CHAT_MODEL, ServeStack

APP = "routing-policies-test"
SYSTEM = ("You are the assistant of a small bicycle shop in Lyon. Answer in one short sentence. The shop "
          "sells city bikes, road bikes, helmets, locks, lights and spare parts, repairs any bike within "
          "two days, and is open Tuesday to Saturday from nine to seven. ") * 4
CONVERSATIONS = 12
TURNS = 3


@pytest.fixture(scope="module")
def prefix_aware_engines(serve_stack: ServeStack, ray_driver: Any) -> Any:
    from ray import serve

    from deployments.app_builder import _engine_app, deployment_name

    args = serve_stack.config["applications"][0]["args"]
    config = AppConfig.model_validate(args)
    model = next(m for m in config.models if m.served_name == CHAT_MODEL)
    model = model.model_copy(update={"num_replicas": 2, "router": model.router.model_copy(update={"policy": "prefix_aware"})})
    assert config.router.for_model(model).policy == "prefix_aware" and config.router.policy == "least_loaded_p2c"
    # A stack engine killed by an earlier test may still be starting again: let it finish first, so
    # three vLLM start-ups do not share the 2 cores at once (this setup once took 410 s that way).
    deadline = time.monotonic() + 300
    while len(serve_stack.engine_replicas()) < 2 and time.monotonic() < deadline:
        time.sleep(2)
    started = time.monotonic()
    serve.run(_engine_app(model, config.router, {}), name=APP, route_prefix=None)  # blocks until running
    print(f"prefix_aware engines ready in {time.monotonic() - started:.0f} s")
    try:
        yield serve.get_deployment_handle(deployment_name(CHAT_MODEL), app_name=APP).options(stream=True)
    finally:
        serve.delete(APP)


async def _chat(handle: Any, messages: list[dict[str, str]], salt: str) -> tuple[str, dict[str, Any]]:
    """(replica that served it, the response body) for one non-streamed chat."""
    hints = RoutingHints()
    body = {"model": CHAT_MODEL, "messages": messages, "max_tokens": 12, "temperature": 0, "cache_salt": salt}
    response = None
    async for event in handle.generate.remote("chat", body, f"routing-{uuid.uuid4().hex[:12]}", hints):
        if event[0] == RESPONSE:
            response = event[1]
    assert response is not None and hints.chosen, (response, hints)
    return hints.chosen, response


async def test_prefix_aware_keeps_each_conversation_on_the_replica_with_its_cache(
    prefix_aware_engines: Any, ray_driver: Any
) -> None:
    served: dict[int, list[str]] = defaultdict(list)
    cached: list[tuple[int, int]] = []  # (previous turn's prompt tokens, this turn's cached tokens)
    for conv in range(CONVERSATIONS):
        salt = f"conversation-{conv}-{uuid.uuid4().hex[:8]}"
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Customer {conv}: do you repair electric bikes? "}]
        previous_prompt = 0
        for turn in range(TURNS):
            replica, response = await _chat(prefix_aware_engines, messages, salt)
            served[conv].append(replica)
            usage = response["usage"]
            if turn:
                cached.append((previous_prompt, (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0))
            previous_prompt = usage["prompt_tokens"]
            messages += [{"role": "assistant", "content": response["choices"][0]["message"]["content"]},
                         {"role": "user", "content": f"And on turn {turn + 2}, what about a lock? "}]
    # Every turn of a conversation went where its first turn went.
    assert all(len(set(replicas)) == 1 for replicas in served.values()), dict(served)
    # The conversations spread over both replicas (12 anchors on a 2-replica ring: all on one has
    # probability 2 / 4096).
    homes = {replicas[0] for replicas in served.values()}
    assert len(homes) == 2, dict(served)
    # Each later turn found the previous prompt cached, but for its last partial KV block (vLLM's
    # CPU backend: 128 tokens); sent to the other replica it would find nothing (its own salt).
    assert all(0 < hit and hit >= prompt - 128 for prompt, hit in cached), cached
    print(f"cached tokens / previous prompt tokens per later turn: {cached}")

    # The engines report their prefix-cache counts to the router (vLLM's PrefixCacheStats).
    router = ray_driver.get_actor("crosslogic-router", namespace="crosslogic")
    deadline = time.monotonic() + 10
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        engines = await router.engines.remote()
        stats = {rid: engines[rid]["stats"] for rid in homes if rid in engines}
        if len(stats) == 2 and all(s["prefix_cache_hits"] > 0 for s in stats.values()):
            break
        time.sleep(0.5)
    assert len(stats) == 2 and all(0 < s["prefix_cache_hits"] < s["prefix_cache_queries"] for s in stats.values()), stats
    hits = sum(s["prefix_cache_hits"] for s in stats.values())
    queries = sum(s["prefix_cache_queries"] for s in stats.values())
    print(f"engine-reported prefix cache: {hits} of {queries} prompt tokens hit ({hits / queries:.2f})")


async def test_session_affinity_on_engine_simulator_replicas(serve_stack: ServeStack, ray_driver: Any) -> None:
    """The engine simulator as a Serve deployment (engine.kind: simulator, no weights) behind the real
    request router with session_affinity: a user's requests (OpenAI `user`, or the session header's
    value in the hints) stay on one replica; users spread."""
    from ray import serve

    from deployments.app_builder import _engine_app, deployment_name

    config = AppConfig.model_validate(serve_stack.config["applications"][0]["args"])
    model = ModelDeploymentConfig.model_validate({
        "served_name": "simulated-chat", "source": "simulated", "num_replicas": 3,
        "ray_actor_options": {"num_cpus": 0}, "router": {"policy": "session_affinity"},
        "engine": {"kind": "simulator", "simulator": {"prefill_tokens_per_s": 50_000, "decode_tokens_per_s": 200}},
    })
    serve.run(_engine_app(model, config.router, {}), name="simulator-test", route_prefix=None)
    try:
        handle = serve.get_deployment_handle(deployment_name("simulated-chat"), app_name="simulator-test")
        handle = handle.options(stream=True)

        async def send(user: str, session: str | None = None) -> str:
            hints = RoutingHints(session_key=session)
            body = {"messages": [{"role": "user", "content": f"hello from {user}"}], "user": user,
                    "stream": True, "max_tokens": 4}
            text = "".join([e[1] async for e in handle.generate.remote("chat", body, uuid.uuid4().hex, hints)])
            assert text.endswith("data: [DONE]\n\n") and text.count("tok") == 4, text
            assert hints.chosen
            return hints.chosen

        homes = {user: {await send(f"user-{user}") for _ in range(3)} for user in range(12)}
        assert all(len(replicas) == 1 for replicas in homes.values()), homes
        assert len(set.union(*homes.values())) >= 2, homes
        # The session header wins over `user`: one session, several user values, one replica.
        assert len({await send(f"other-{n}", session="conversation-7") for n in range(4)}) == 1
    finally:
        serve.delete("simulator-test")
