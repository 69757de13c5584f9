"""The Responses API end to end with the official `openai` client: create (JSON and streamed events),
retrieve, continue with previous_response_id, delete; tenant isolation (another tenant's key gets a
404); OpenAI errors for bad input; one usage row per response in the ledger, a cut stream included.

Generated text is never compared (a 135M model): `ignore_eos` fixes how many tokens are generated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from crosslogic.responses.ids import request_id_of
from tests.serve.conftest import CHAT_MODEL, ServeStack

# One row per request id: the ledger's primary key (a second write is a no-op), found within 5 s.
from tests.serve.test_metering_end_to_end import _usage_row

PROMPT = "Name three colours."
FIXED = {"ignore_eos": True}  # vLLM's extra parameter: exactly max_output_tokens are generated


@pytest.fixture(scope="module")
def tenant(serve_stack: ServeStack) -> tuple[str, str, str]:
    return serve_stack.create_tenant_and_key("responses-owner")


@pytest.fixture(scope="module")
def client(serve_stack: ServeStack, tenant: tuple[str, str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=tenant[2], max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def stranger(serve_stack: ServeStack) -> Iterator[openai.OpenAI]:
    _, _, secret = serve_stack.create_tenant_and_key("responses-stranger")
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=secret, max_retries=0) as c:
        yield c


async def test_create_retrieve_and_one_usage_row(
    client: openai.OpenAI, tenant: tuple[str, str, str], database_url: str
) -> None:
    raw = client.responses.with_raw_response.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=16, extra_body=FIXED)
    created = raw.parse()
    assert created.object == "response" and created.id.startswith("resp_")
    assert raw.headers["x-request-id"] == request_id_of(created.id)
    assert created.model == CHAT_MODEL and created.status == "incomplete"  # stopped by max_output_tokens
    assert created.output[0].type == "message" and created.output[0].role == "assistant"
    assert isinstance(created.output_text, str) and created.output_text
    assert created.usage is not None and created.usage.output_tokens == 16 and created.usage.input_tokens > 5
    assert created.usage.total_tokens == created.usage.input_tokens + 16

    retrieved = client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == created.output_text
    assert retrieved.usage == created.usage and retrieved.status == created.status

    row = await _usage_row(database_url, raw.headers["x-request-id"])
    assert (str(row["tenant_id"]), str(row["key_id"]), row["model"], row["status"]) == (tenant[0], tenant[1], CHAT_MODEL, "finished")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (created.usage.input_tokens, 16)


async def test_streamed_events_and_their_usage_row(client: openai.OpenAI, database_url: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=CHAT_MODEL, input=PROMPT, max_output_tokens=12, stream=True, extra_body=FIXED
    )
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and kinds.count("response.completed") == 1
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.id == events[0].response.id and final.usage is not None
    assert final.usage.output_tokens == 12
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text

    assert client.responses.retrieve(final.id).output_text == deltas  # stored before the last event
    assert raw.headers["x-request-id"] == request_id_of(final.id)
    row = await _usage_row(database_url, request_id_of(final.id))
    assert row["status"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (final.usage.input_tokens, 12)


def test_previous_response_continues_the_conversation(client: openai.OpenAI) -> None:
    first = client.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=16, extra_body=FIXED)
    second = client.responses.create(
        model=CHAT_MODEL, input="And one more?", previous_response_id=first.id, max_output_tokens=8, extra_body=FIXED,
    )
    assert second.previous_response_id == first.id and second.id != first.id
    alone = client.responses.create(model=CHAT_MODEL, input="And one more?", max_output_tokens=1, extra_body=FIXED)
    assert first.usage is not None and second.usage is not None and alone.usage is not None
    # The first turn and its answer came before the new input: the prompt holds the first one's whole
    # prompt and its 16 tokens (re-tokenising the answer may merge a token), and more than the new
    # input alone by at least the answer and the first user turn.
    assert second.usage.input_tokens > first.usage.input_tokens + 16 - 2
    assert second.usage.input_tokens - alone.usage.input_tokens >= 16 - 2 + 4
    third = client.responses.create(
        model=CHAT_MODEL, input="Thanks.", previous_response_id=second.id, max_output_tokens=1, extra_body=FIXED,
    )
    assert third.usage is not None and third.usage.input_tokens > second.usage.input_tokens + 8 - 2


def test_input_items_list_the_request_input(client: openai.OpenAI, stranger: openai.OpenAI) -> None:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    made = client.responses.create(model=CHAT_MODEL, input=conversation, max_output_tokens=2,  # type: ignore[arg-type]
                                   extra_body=FIXED)
    newest_first = client.responses.input_items.list(made.id)
    items = list(newest_first)
    assert [(i.type, i.role) for i in items] == [("message", "user"), ("message", "system")]  # type: ignore[union-attr]
    assert items[0].content[0].type == "input_text" and items[0].content[0].text == PROMPT  # type: ignore[union-attr]
    oldest_first = client.responses.input_items.list(made.id, order="asc", limit=1)
    assert [i.id for i in oldest_first.data] == [items[1].id] and oldest_first.has_more
    assert [i.id for i in client.responses.input_items.list(made.id, order="asc", after=items[1].id).data] == [items[0].id]
    with pytest.raises(openai.NotFoundError):
        stranger.responses.input_items.list(made.id)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.input_items.list(made.id, limit=0)
    assert bad.value.body["param"] == "limit"  # type: ignore[index]


def test_another_tenant_gets_not_found(client: openai.OpenAI, stranger: openai.OpenAI) -> None:
    mine = client.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=4, extra_body=FIXED)
    with pytest.raises(openai.NotFoundError) as read:
        stranger.responses.retrieve(mine.id)
    assert read.value.status_code == 404
    assert read.value.body == {  # type: ignore[comparison-overlap]
        "message": f"Response with id '{mine.id}' not found.", "type": "invalid_request_error",
        "param": None, "code": "not_found",
    }
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as continued:
        stranger.responses.create(model=CHAT_MODEL, input="hi", previous_response_id=mine.id, max_output_tokens=4)
    assert continued.value.body["param"] == "previous_response_id"  # type: ignore[index]
    # The same answer as for an id that was never made.
    with pytest.raises(openai.NotFoundError) as unknown:
        stranger.responses.retrieve("resp_" + "0" * 32)
    assert unknown.value.body["code"] == read.value.body["code"]  # type: ignore[index]
    assert client.responses.retrieve(mine.id).id == mine.id  # untouched for its owner


async def test_store_false_is_not_kept_but_is_metered(client: openai.OpenAI, database_url: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=CHAT_MODEL, input=PROMPT, max_output_tokens=4, store=False, extra_body=FIXED
    )
    response = raw.parse()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=CHAT_MODEL, input="hi", previous_response_id=response.id, max_output_tokens=4)
    assert (await _usage_row(database_url, raw.headers["x-request-id"]))["completion_tokens"] == 4


def test_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=CHAT_MODEL, input=PROMPT, max_output_tokens=2, extra_body=FIXED)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": 42}, 400, "input"),
        ({"input": [{"role": "wizard", "content": "x"}]}, 400, None),
        ({"input": PROMPT, "max_output_tokens": 100_000}, 400, "max_output_tokens"),
        ({"input": PROMPT, "background": True}, 400, "background"),
        ({"input": PROMPT, "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        ({"input": PROMPT, "model": "no-such-model"}, 404, "model"),
    ],
)
def test_bad_input_gets_an_openai_error(client: openai.OpenAI, kwargs: dict[str, Any], status: int, param: str | None) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(**{"model": CHAT_MODEL, **kwargs})
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error" and isinstance(body["code"], str) and body["message"]
    if param is not None:
        assert body["param"] == param


async def test_a_cut_stream_is_metered_and_stored_as_cancelled(
    serve_stack: ServeStack, client: openai.OpenAI, tenant: tuple[str, str, str], database_url: str
) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream(
            "POST", f"{serve_stack.openai_base}/responses",
            json={"model": CHAT_MODEL, "input": PROMPT, "max_output_tokens": 1000, "stream": True, **FIXED},
            headers={"authorization": f"Bearer {tenant[2]}"},
        ) as resp:
            assert resp.status_code == 200
            request_id = resp.headers["x-request-id"]
            deltas = 0
            async for line in resp.aiter_lines():
                deltas += line == "event: response.output_text.delta"
                if deltas >= 8:
                    break
    row = await _usage_row(database_url, request_id, timeout_s=15)
    assert row["status"] == "cancelled"
    assert 7 <= row["completion_tokens"] < 1000 and row["prompt_tokens"] > 5
    stored = client.responses.retrieve("resp_" + request_id[len("req_"):])
    assert stored.status == "cancelled"
