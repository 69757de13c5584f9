"""A batch survives the ingress replica running it being killed (SIGKILL, mid-batch, lines in flight):
its claim expires, another runner resumes from the lines still pending, and the batch completes with
every line in the output file once and metered exactly once (one ledger row per line, equal to the
usage the output file reports). Official `openai` client, real vLLM engines, two ingress replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import openai
import psutil
import pytest

from tests.serve.conftest import CHAT_MODEL, ServeStack
from tests.serve.test_rate_limits_end_to_end import _ingress_processes, _wait_ingress_replaced

LINES = 60
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _jsonl() -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": CHAT_MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}],
                 "max_tokens": 16, "ignore_eos": True}}).encode() + b"\n" for i in range(LINES))


async def _holder(database_url: str, batch_id: str) -> tuple[str | None, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT claimed_by, completed FROM batches WHERE id = $1", batch_id)
    finally:
        await conn.close()
    assert row is not None
    return row["claimed_by"], int(row["completed"])


async def _ledger(database_url: str, batch_id: str) -> list[Any]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(
            "SELECT request_id, prompt_tokens, completion_tokens FROM usage_ledger WHERE batch_id = $1", batch_id))
    finally:
        await conn.close()


@pytest.fixture
def client(serve_stack: ServeStack) -> Iterator[openai.OpenAI]:
    _, _, secret = serve_stack.create_tenant_and_key("batch-kill")
    # Retries: a request the proxy had sent to the killed replica is answered 5xx; the client retries.
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=secret, max_retries=3, timeout=60) as c:
        yield c


def test_a_batch_survives_the_kill_of_its_ingress_replica(
    serve_stack: ServeStack, ray_driver: Any, database_url: str, client: openai.OpenAI,
) -> None:
    _wait_ingress_replaced(serve_stack, ray_driver)
    # Listed before the batch starts: scanning the cluster's processes takes seconds on a loaded machine.
    processes = {p.pid: p for p in _ingress_processes(serve_stack)}
    uploaded = client.files.create(file=("kill.jsonl", _jsonl()), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    # Mid-batch: some lines done, the rest pending; the claim names the holding process.
    deadline = time.monotonic() + 120
    while True:
        holder, completed = asyncio.run(_holder(database_url, batch.id))
        if holder is not None and 4 <= completed:
            break
        assert time.monotonic() < deadline, (holder, completed)
        time.sleep(0.1)
    assert holder is not None
    process = processes[int(holder.split("-")[1])]
    process.kill()
    killed_at = time.monotonic()
    _, alive = psutil.wait_procs([process], timeout=30)
    assert not alive
    done_before = asyncio.run(_holder(database_url, batch.id))[1]
    assert done_before < LINES, done_before  # it died mid-batch: the rest is another runner's to resume

    deadline = time.monotonic() + 300
    while (found := client.batches.retrieve(batch.id)).status not in TERMINAL:
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    resumed_s = time.monotonic() - killed_at
    print(f"killed runner {holder} at {completed} lines done ({done_before} when it was gone); "
          f"batch {found.status} {resumed_s:.1f}s after the kill")
    assert found.status == "completed", found
    assert found.request_counts is not None
    assert (found.request_counts.total, found.request_counts.completed, found.request_counts.failed) == (LINES, LINES, 0)
    assert found.error_file_id is None and found.output_file_id is not None
    output = [json.loads(line) for line in client.files.content(found.output_file_id).content.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"line-{i}" for i in range(LINES))
    assert all(o["response"]["status_code"] == 200 for o in output)
    # Metered exactly once: one row per line (the ledger's key is the line's request id), no more, none missing.
    rows = asyncio.run(_ledger(database_url, batch.id))
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == LINES == len(by_id)
    for line in output:
        usage = line["response"]["body"]["usage"]
        row = by_id[line["response"]["request_id"]]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    _wait_ingress_replaced(serve_stack, ray_driver)
