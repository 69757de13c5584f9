"""Tenants do not share the engines' prefix cache (issue 10, item 6).

A reused prefix prefills faster, so a shared cache tells one tenant what another sent recently. The
signal here is deterministic, not timing: vLLM's `usage.prompt_tokens_details.cached_tokens`, the
prompt tokens a request took from the prefix cache. Each engine replica has its own cache, so a
probe only means something on the replica that served the earlier request (`x-crosslogic-replica`):
requests are repeated until one lands there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

# Well beyond a few KV blocks (CPU blocks hold up to 128 tokens): a hit shows as hundreds of tokens.
FILLER = " ".join(f"Paragraph {i}: the keeper logged the tide, the wind and the passing ships." for i in range(40))
ATTEMPTS = 16


@dataclass
class Probe:
    replica: str
    cached: int


def _send(stack: ServeStack, key: str, endpoint: str, prompt: str) -> Probe:
    if endpoint == "chat":
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
    else:
        body = {"prompt": prompt}
    resp = httpx.post(
        f"{stack.openai_base}/{'chat/completions' if endpoint == 'chat' else 'completions'}",
        json={"model": CHAT_MODEL, "max_tokens": 1, "temperature": 0, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["prompt_tokens"] > 300, usage
    details = usage.get("prompt_tokens_details") or {}
    return Probe(resp.headers["x-crosslogic-replica"], int(details.get("cached_tokens") or 0))


def _send_on(stack: ServeStack, replica: str, key: str, endpoint: str, prompt: str) -> Probe:
    """The first of this key's requests that lands on `replica` (earlier ones went to the other)."""
    probes = []
    for _ in range(ATTEMPTS):
        probe = _send(stack, key, endpoint, prompt)
        if probe.replica == replica:
            return probe
        probes.append(probe)
    raise AssertionError(f"no request reached replica {replica} in {ATTEMPTS}: {probes}")


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_tenant_reuses_its_own_prefixes_and_never_another_tenants(serve_stack: ServeStack, endpoint: str) -> None:
    run = uuid.uuid4().hex[:12]
    tenant_a, _, key_a = serve_stack.create_tenant_and_key(f"cache-a-{endpoint}-{run}")
    _, _, key_b = serve_stack.create_tenant_and_key(f"cache-b-{endpoint}-{run}")
    created = serve_stack.admin("POST", f"/tenants/{tenant_a}/keys", {"name": "second"})
    assert created.status_code == 201, created.text
    key_a2 = created.json()["secret"]
    # A fresh prefix nobody sent before: whatever is cached below was cached by this test.
    prompt = f"Request {run}. {FILLER} Summarise."

    first = _send(serve_stack, key_a, endpoint, prompt)
    again = _send_on(serve_stack, first.replica, key_a, endpoint, prompt)
    assert again.cached > 200, (first, again)  # the signal works: a repeat hits

    other = _send_on(serve_stack, first.replica, key_b, endpoint, prompt)
    assert other.cached == 0, f"tenant B reused tenant A's cached prefix: {other}"

    # The default scope is the tenant: its other keys share what it cached.
    sibling = _send_on(serve_stack, first.replica, key_a2, endpoint, prompt)
    assert sibling.cached > 200, sibling


def test_a_client_cannot_choose_a_cache_salt(serve_stack: ServeStack) -> None:
    resp = httpx.post(
        f"{serve_stack.openai_base}/completions",
        json={"model": CHAT_MODEL, "prompt": "hi", "max_tokens": 1, "cache_salt": "tenant-0123"},
        headers=serve_stack.auth_headers,
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "cache_salt" and error["type"] == "invalid_request_error"


def test_embeddings_carry_the_salt(serve_stack: ServeStack) -> None:
    # The embedding model (BERT, bidirectional attention) has no prefix cache in vLLM; the salt is
    # still set, and must not break it.
    resp = httpx.post(
        f"{serve_stack.openai_base}/embeddings",
        json={"model": EMBED_MODEL, "input": ["one prefix", "another"]},
        headers=serve_stack.auth_headers,
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 2
