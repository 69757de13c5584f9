"""Ids that key money are the server's: a client reusing one `x-request-id` is billed for every request.

The client's id is kept beside each ledger row and echoed as `x-client-request-id`; the response's
`x-request-id` is the server's own (once, whatever Ray Serve's HAProxy ingress adds).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.serve.conftest import CHAT_MODEL, ServeStack

N = 5
MESSAGES = [{"role": "user", "content": "Say hi."}]
SERVER_ID = re.compile(r"req_[0-9a-f]{32}")


async def _rows_for_client_id(database_url: str, client_id: str, want: int, timeout_s: float = 10.0) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        rows: list[asyncpg.Record] = []
        while time.monotonic() < deadline:
            rows = await conn.fetch(
                "SELECT request_id, client_request_id, status FROM usage_ledger WHERE client_request_id = $1", client_id
            )
            if len(rows) >= want:
                break
            await asyncio.sleep(0.1)
        return rows
    finally:
        await conn.close()


async def test_reused_client_request_id_bills_every_request(serve_stack: ServeStack, database_url: str) -> None:
    client_id = f"my-request-{uuid.uuid4().hex[:8]}"
    server_ids: list[str] = []
    async with httpx.AsyncClient(timeout=120) as http:
        for i in range(N):
            stream = i % 2 == 1  # both paths: JSON and SSE
            resp = await http.post(
                f"{serve_stack.openai_base}/chat/completions",
                json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": stream},
                headers={**serve_stack.auth_headers, "x-request-id": client_id},
            )
            assert resp.status_code == 200, resp.text
            # Exactly one x-request-id, the server's; the client's comes back as x-client-request-id.
            assert len(resp.headers.get_list("x-request-id")) == 1, resp.headers.get_list("x-request-id")
            server_id = resp.headers["x-request-id"]
            assert server_id != client_id and SERVER_ID.fullmatch(server_id)
            assert resp.headers["x-client-request-id"] == client_id
            server_ids.append(server_id)
    assert len(set(server_ids)) == N
    rows = await _rows_for_client_id(database_url, client_id, N)
    assert len(rows) == N, [dict(r) for r in rows]
    assert {r["request_id"] for r in rows} == set(server_ids)
    assert all(r["status"] == "finished" for r in rows)


async def test_openai_style_client_id_header_and_none(serve_stack: ServeStack, database_url: str) -> None:
    client_id = f"oa-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=120) as http:
        url = f"{serve_stack.openai_base}/chat/completions"
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 2}
        named = await http.post(url, json=body, headers={**serve_stack.auth_headers, "x-client-request-id": client_id})
        plain = await http.post(url, json=body, headers=serve_stack.auth_headers)
    assert named.status_code == plain.status_code == 200
    assert named.headers["x-client-request-id"] == client_id
    assert "x-client-request-id" not in plain.headers
    for resp in (named, plain):
        assert len(resp.headers.get_list("x-request-id")) == 1 and SERVER_ID.fullmatch(resp.headers["x-request-id"])
    rows = await _rows_for_client_id(database_url, client_id, 1)
    assert [r["request_id"] for r in rows] == [named.headers["x-request-id"]]
    # The ingress replica's Serve log holds the request's JSON line (crosslogic/api/request_log.py),
    # with the key's public prefix and never its secret.
    assert serve_stack.cluster.temp_dir is not None
    line = await _request_log_line(Path(serve_stack.cluster.temp_dir), named.headers["x-request-id"])
    assert (line["client_request_id"], line["model"], line["status"], line["outcome"]) == (
        client_id, CHAT_MODEL, 200, "finished")
    assert line["tenant_id"] == serve_stack.tenant_id and serve_stack.api_key.startswith(line["key_prefix"])
    assert line["completion_tokens"] > 0 and line["ttft_ms"] is not None and line["stream"] is False
    for log in Path(serve_stack.cluster.temp_dir).glob("session_latest/logs/serve/*.log"):
        assert serve_stack.api_key not in log.read_text(errors="replace"), log.name


async def _request_log_line(ray_tmp: Path, request_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    """The request log line of `request_id` from the replicas' Serve logs (written as the request ends)."""
    marker = f'{{"request_id":"{request_id}"'
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in ray_tmp.glob("session_latest/logs/serve/replica_*.log"):
            for text in log.read_text(errors="replace").splitlines():
                start = text.find(marker)
                if start >= 0:
                    parsed: dict[str, Any] = json.JSONDecoder().raw_decode(text[start:])[0]
                    return parsed
        await asyncio.sleep(0.2)
    raise AssertionError(f"no request log line for {request_id} in the serve logs")
