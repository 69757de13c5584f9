"""The Batch API end to end with the official `openai` client on the serve stack (two ingress replicas,
each running a batch runner; real vLLM engines): upload, create, poll to completed, output and error
files (a malformed line fails alone), one usage row per line marked with the batch and its price
multiplier, equal to what the output file reports; tenant isolation (another tenant's key: 404 on every
id); a batch cancelled midway; throughput against the same lines sent interactively; a 200-line batch
that completes while an interactive client streams, within the stated TTFT bound.

Generated text is never compared (a 135M model): `ignore_eos` fixes how many tokens are generated.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import openai
import pytest

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

LINES = 20
MALFORMED = 7
MAX_TOKENS = 8
TERMINAL = {"completed", "failed", "expired", "cancelled"}
# The interactive TTFT bound while a batch runs (issue 13; README, "Batches"): median within this factor
# of the median alone, plus this slack.
BATCH_TTFT_FACTOR = 2.0
BATCH_TTFT_SLACK_S = 0.1


def _body(i: int) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": f"Count to {i}."}],
            "max_tokens": MAX_TOKENS, "ignore_eos": True}


def _interactive(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as the official client's keyword arguments (vLLM's ignore_eos as extra body)."""
    return {**{k: v for k, v in body.items() if k != "ignore_eos"}, "extra_body": {"ignore_eos": True}}


def _jsonl(n: int, malformed_at: tuple[int, ...] = ()) -> bytes:
    out = []
    for i in range(n):
        line = json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": _body(i)})
        out.append(line[: len(line) // 2] if i in malformed_at else line)
    return ("\n".join(out) + "\n").encode()


@pytest.fixture(scope="module")
def tenant(serve_stack: ServeStack) -> tuple[str, str, str]:
    return serve_stack.create_tenant_and_key("batches-owner")


@pytest.fixture(scope="module")
def client(serve_stack: ServeStack, tenant: tuple[str, str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=tenant[2], max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stranger(serve_stack: ServeStack) -> Iterator[openai.OpenAI]:
    _, _, secret = serve_stack.create_tenant_and_key("batches-stranger")
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=secret, max_retries=0) as c:
        yield c


def _wait(client: openai.OpenAI, batch_id: str, timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not finished after {timeout_s}s: {batch.status}")


def _running(client: openai.OpenAI, lines: int, *, completed: int) -> Any:
    """A batch of `lines` requests, once at least `completed` of them are done."""
    uploaded = client.files.create(file=("many.jsonl", _jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < completed:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return batch


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines()]


@pytest.fixture(scope="module")
def finished(client: openai.OpenAI) -> dict[str, Any]:
    """The 20-line batch, run to its end (shared by the checks below)."""
    data = _jsonl(LINES, malformed_at=(MALFORMED,))
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"test": "e2e"})
    return {"data": data, "file": uploaded, "created": created, "batch": _wait(client, created.id)}


def test_files_round_trip(client: openai.OpenAI, finished: dict[str, Any]) -> None:
    uploaded = finished["file"]
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.id.startswith("file-")
    assert uploaded.bytes == len(finished["data"]) and uploaded.filename == "requests.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == finished["data"]
    assert uploaded.id in [f.id for f in client.files.list(purpose="batch")]


def test_batch_completes_with_output_and_error_files(client: openai.OpenAI, finished: dict[str, Any]) -> None:
    created, batch = finished["created"], finished["batch"]
    assert created.status == "validating" and created.metadata == {"test": "e2e"}
    assert created.expires_at - created.created_at == 24 * 3600
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        LINES, LINES - 1, 1)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    output = _lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == [f"line-{i}" for i in range(LINES) if i != MALFORMED]
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == MAX_TOKENS
    errors = _lines(client, batch.error_file_id)
    assert len(errors) == 1 and errors[0]["error"]["code"] == "invalid_json_line" and errors[0]["response"] is None
    assert batch.id in [b.id for b in client.batches.list()]


async def test_one_usage_row_per_line_at_the_batch_price(
    client: openai.OpenAI, finished: dict[str, Any], tenant: tuple[str, str, str], database_url: str,
) -> None:
    batch = finished["batch"]
    output = _lines(client, batch.output_file_id)
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = await conn.fetch("SELECT * FROM usage_ledger WHERE batch_id = $1", batch.id)
            if len(rows) >= len(output):
                break
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    by_id = {r["request_id"]: r for r in rows}
    assert len(rows) == LINES - 1 == len(by_id)
    for line in output:
        row = by_id[line["response"]["request_id"]]
        usage = line["response"]["body"]["usage"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert (str(row["tenant_id"]), row["status"], float(row["price_multiplier"])) == (tenant[0], "finished", 0.5)


def test_another_tenant_gets_404_on_every_id(stranger: openai.OpenAI, finished: dict[str, Any]) -> None:
    batch = finished["batch"]
    for file_id in (finished["file"].id, batch.output_file_id):
        with pytest.raises(openai.NotFoundError):
            stranger.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.content(file_id)
        with pytest.raises(openai.NotFoundError):
            stranger.files.delete(file_id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):  # another tenant's file cannot be a batch's input
        stranger.batches.create(input_file_id=finished["file"].id, endpoint="/v1/chat/completions",
                                completion_window="24h")
    assert batch.id not in [b.id for b in stranger.batches.list()]


def test_bad_input_gets_openai_errors(client: openai.OpenAI, finished: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=finished["file"].id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):  # finished: nothing to cancel
        client.batches.cancel(finished["batch"].id)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_" + "0" * 32)


def test_cancel_midway(client: openai.OpenAI) -> None:
    batch = _running(client, 60, completed=3)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = _wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == 60 and counts.completed >= 3 and counts.failed > 0
    assert counts.completed + counts.failed == 60
    assert len(_lines(client, done.output_file_id)) == counts.completed
    assert {e["error"]["code"] for e in _lines(client, done.error_file_id)} == {"batch_cancelled"}


def test_throughput_against_interactive(client: openai.OpenAI, finished: dict[str, Any]) -> None:
    """Figures for the report: the batch's lines/s (in_progress to completed) and the same 19 lines
    sent interactively, one at a time and 4 at a time (the runner's max_concurrent_lines)."""
    batch = finished["batch"]
    batch_s = batch.completed_at - batch.in_progress_at  # whole seconds (OpenAI's timestamps)
    bodies = [_body(i) for i in range(LINES) if i != MALFORMED]
    started = time.monotonic()
    for body in bodies:
        client.chat.completions.create(**_interactive(body))
    sequential_s = time.monotonic() - started
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda body: client.chat.completions.create(**_interactive(body)), bodies))
    parallel_s = time.monotonic() - started
    print(f"\nBATCH-THROUGHPUT lines={len(bodies)} batch={batch_s}s ({len(bodies) / max(batch_s, 1):.2f} lines/s) "
          f"interactive sequential={sequential_s:.1f}s ({len(bodies) / sequential_s:.2f} lines/s) "
          f"interactive x4={parallel_s:.1f}s ({len(bodies) / parallel_s:.2f} lines/s)")


async def test_an_embeddings_batch(client: openai.OpenAI, database_url: str) -> None:
    """Embeddings lines run on the embedding model, each metered once at the batch price (no output tokens)."""
    texts = ["red", "green and blue", "a longer sentence about the colour of the sea"]
    data = "".join(json.dumps({"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings",
                               "body": {"model": EMBED_MODEL, "input": text}}) + "\n" for i, text in enumerate(texts))
    uploaded = client.files.create(file=("embed.jsonl", data.encode()), purpose="batch")
    batch = _wait(client, client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 0)
    output = _lines(client, batch.output_file_id)
    assert [o["custom_id"] for o in output] == ["e-0", "e-1", "e-2"]
    vectors = [o["response"]["body"]["data"][0]["embedding"] for o in output]
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) >= 64
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + 10
        while len(rows := await conn.fetch("SELECT * FROM usage_ledger WHERE batch_id = $1", batch.id)) < 3:
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    for row in rows:
        assert (row["model"], row["completion_tokens"], float(row["price_multiplier"])) == (EMBED_MODEL, 0, 0.5)
        assert row["prompt_tokens"] > 0
    prompt_tokens = {o["response"]["request_id"]: o["response"]["body"]["usage"]["prompt_tokens"] for o in output}
    assert {r["request_id"]: r["prompt_tokens"] for r in rows} == prompt_tokens


def test_delete_file(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("gone.jsonl", _jsonl(1)), purpose="batch")
    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def _ttfts(client: openai.OpenAI, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.monotonic()
        stream = client.chat.completions.create(**_interactive(_body(i)), stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                out.append(time.monotonic() - started)
                break
        stream.close()
    return sorted(out)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def test_a_200_line_batch_completes_while_an_interactive_client_streams(client: openai.OpenAI) -> None:
    """Issue 13's figure and its bound: a lone streaming client's TTFT alone, then throughout a 200-line
    batch, which completes meanwhile. The runner starts lines only while interactive traffic leaves
    room (crosslogic/batches/engine_room.py), so a single client shares the engines with at most
    `max_concurrent_lines` per ingress replica. The stated bound (README, "Batches"): the client's
    median TTFT with the batch running is within BATCH_TTFT_FACTOR x its median alone + BATCH_TTFT_SLACK_S."""
    alone = _ttfts(client, 12)
    uploaded = client.files.create(file=("two-hundred.jsonl", _jsonl(200)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    during: list[float] = []
    started = time.monotonic()
    while (state := client.batches.retrieve(batch.id)).status not in TERMINAL:
        assert time.monotonic() - started < 600, state
        sample = _ttfts(client, 1)
        if state.status == "in_progress" and client.batches.retrieve(batch.id).status == "in_progress":
            during += sample  # the batch ran from before this request to after its first token
    batch_s = time.monotonic() - started
    assert state.status == "completed" and state.request_counts is not None, state
    assert (state.request_counts.completed, state.request_counts.failed) == (200, 0), state.request_counts
    assert len(_lines(client, state.output_file_id)) == 200
    bound = BATCH_TTFT_FACTOR * _median(alone) + BATCH_TTFT_SLACK_S
    print(f"\nBATCH-TTFT alone: median {_median(alone) * 1000:.0f} ms, max {max(alone) * 1000:.0f} ms; "
          f"during a 200-line batch ({batch_s:.1f}s, {200 / batch_s:.1f} lines/s): median "
          f"{_median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms over {len(during)} requests; "
          f"bound {bound * 1000:.0f} ms")
    assert len(during) >= 5, f"only {len(during)} interactive requests while the batch ran"
    assert _median(during) <= bound, (alone, during)
