"""Every request that reached an engine leaves exactly one usage row with the engine's token counts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]


async def _usage_row(database_url: str, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await conn.fetch("SELECT * FROM usage_ledger WHERE request_id = $1", request_id)
            if rows:
                assert len(rows) == 1
                return dict(rows[0])
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"no usage row for {request_id} after {timeout_s}s")


async def test_finished_request_is_metered(serve_stack: ServeStack, database_url: str) -> None:
    tenant_id, key_id, secret = serve_stack.create_tenant_and_key("metered-finished")
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.post(
            f"{serve_stack.openai_base}/chat/completions",
            json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 12},
            headers={"authorization": f"Bearer {secret}"},
        )
    assert resp.status_code == 200
    usage = resp.json()["usage"]
    row = await _usage_row(database_url, resp.headers["x-request-id"])
    assert str(row["tenant_id"]) == tenant_id and str(row["key_id"]) == key_id
    assert row["model"] == CHAT_MODEL and row["status"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["total_ms"] is not None and row["ttft_ms"] is not None


async def test_stream_without_include_usage_is_still_metered(serve_stack: ServeStack, database_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream(
            "POST",
            f"{serve_stack.openai_base}/chat/completions",
            json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 10, "stream": True, "ignore_eos": True},
            headers=serve_stack.auth_headers,
        ) as resp:
            body = "".join([line async for line in resp.aiter_lines()])
    assert '"usage"' not in body  # the client did not ask for usage
    row = await _usage_row(database_url, resp.headers["x-request-id"])
    assert row["status"] == "finished" and row["completion_tokens"] == 10 and row["prompt_tokens"] > 0


async def test_cancelled_stream_is_metered_with_tokens_generated(serve_stack: ServeStack, database_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream(
            "POST",
            f"{serve_stack.openai_base}/chat/completions",
            json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 1000, "stream": True, "ignore_eos": True},
            headers=serve_stack.auth_headers,
        ) as resp:
            request_id = resp.headers["x-request-id"]
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: {")
                if seen >= 8:
                    break
    row = await _usage_row(database_url, request_id)
    assert row["status"] == "cancelled"
    assert 7 <= row["completion_tokens"] < 1000 and row["prompt_tokens"] > 0


async def test_engine_rejected_request_is_metered_as_failed(serve_stack: ServeStack, database_url: str) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        # A prompt longer than the context: past the ingress (whose checks are about the output
        # budget), refused by the engine once it has counted the prompt.
        resp = await http.post(
            f"{serve_stack.openai_base}/chat/completions",
            json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hello " * 3000}], "max_tokens": 5},
            headers=serve_stack.auth_headers,
        )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    row = await _usage_row(database_url, resp.headers["x-request-id"])
    assert row["status"] == "failed" and row["completion_tokens"] == 0


async def test_usage_report_through_admin_api(serve_stack: ServeStack) -> None:
    tenant_id, _, secret = serve_stack.create_tenant_and_key("metered-report")
    async with httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {secret}"}) as http:
        for _ in range(2):
            r = await http.post(f"{serve_stack.openai_base}/chat/completions", json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 3})
            assert r.status_code == 200
        r = await http.post(f"{serve_stack.openai_base}/embeddings", json={"model": EMBED_MODEL, "input": "hello"})
        assert r.status_code == 200
    deadline = time.monotonic() + 5
    while True:
        report = serve_stack.admin("GET", f"/usage?tenant_id={tenant_id}&group_by=model")
        assert report.status_code == 200, report.text
        rows = {row["group"]: row for row in report.json()["data"]}
        if (rows.get(CHAT_MODEL, {}).get("requests") == 2 and EMBED_MODEL in rows) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert rows[CHAT_MODEL]["requests"] == 2
    assert rows[EMBED_MODEL]["requests"] == 1 and rows[EMBED_MODEL]["prompt_tokens"] > 0
