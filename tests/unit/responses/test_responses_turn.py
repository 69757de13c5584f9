"""The ingress's part of a Responses request on PostgreSQL: continuation as the tenant only, storage
of JSON answers and of streams (finished, cut short), `store: false` honoured."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.request_ids import mint_request_id
from crosslogic.auth.context import AuthContext
from crosslogic.errors import NotFoundError
from crosslogic.protocol.responses import ResponsesRequest
from crosslogic.responses.events import STREAM_END
from crosslogic.responses.ids import response_id
from crosslogic.responses.store import ResponseStore
from crosslogic.responses.turn import ResponsesTurn
from crosslogic.tenants.models import Limits, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant


async def _auth(db: asyncpg.Pool) -> AuthContext:
    tenant = await create_tenant(db, TenantCreate(name=f"turn-{uuid.uuid4().hex[:8]}"))
    return AuthContext(
        tenant_id=tenant.id, tenant_name=tenant.name, key_id=uuid.uuid4(), key_name="k", key_prefix="sk-cl-x",
        scopes=frozenset(), key_limits=Limits(), tenant_limits=Limits(), stripe_customer_id=None,
    )


def _response(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "status": status, "model": "m",
        "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 11, "output_tokens": 4, "total_tokens": 15},
    }


def _event(kind: str, **data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


async def _turn(store: ResponseStore, auth: AuthContext, body: dict[str, Any]) -> tuple[ResponsesTurn, dict[str, Any], str]:
    request_id = mint_request_id()
    turn = ResponsesTurn(store, request_id)
    sent = await turn.prepare(auth, ResponsesRequest.model_validate(body), body)
    return turn, sent, response_id(request_id)


async def test_json_answer_is_stored_and_continued_as_the_tenant_only(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    auth, stranger = await _auth(db_pool), await _auth(db_pool)
    first, sent, rid = await _turn(store, auth, {"model": "m", "input": "Hi", "instructions": "Be brief"})
    assert "store" not in sent and sent["input"] == "Hi"
    await first.answered(JSONResponse(_response(rid, "Hello!")))
    stored = await store.get(auth.tenant_id, rid)
    assert (stored.status, stored.input_tokens, stored.output_tokens) == ("completed", 11, 4)
    assert stored.request == {"model": "m", "input": "Hi", "instructions": "Be brief"}

    _, sent, _ = await _turn(store, auth, {"model": "m", "input": "And again?", "previous_response_id": rid})
    # The previous conversation and its output, then the new input; the old instructions stay behind.
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == "Hello!"
    assert sent["previous_response_id"] == rid and "instructions" not in sent

    with pytest.raises(NotFoundError) as caught:
        await _turn(store, stranger, {"model": "m", "input": "x", "previous_response_id": rid})
    assert caught.value.param == "previous_response_id"


async def test_store_false_and_errors_are_not_stored(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    auth = await _auth(db_pool)
    turn, _, rid = await _turn(store, auth, {"model": "m", "input": "Hi", "store": False})
    await turn.answered(JSONResponse(_response(rid, "Hello!")))
    turn2, _, rid2 = await _turn(store, auth, {"model": "m", "input": "Hi"})
    await turn2.answered(JSONResponse({"error": {"message": "bad"}}, status_code=400))
    for missing in (rid, rid2):
        with pytest.raises(NotFoundError):
            await store.get(auth.tenant_id, missing)


async def test_a_stream_is_stored_before_its_last_event_reaches_the_client(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    auth = await _auth(db_pool)
    turn, _, rid = await _turn(store, auth, {"model": "m", "input": "Hi", "stream": True})
    created = {**_response(rid, ""), "status": "in_progress", "output": [], "usage": None}

    async def engine() -> AsyncIterator[str]:
        yield _event("response.created", response=created) + _event("response.output_text.delta", delta="Hel")
        yield _event("response.output_text.delta", delta="lo")
        yield _event("response.completed", response=_response(rid, "Hello")) + STREAM_END

    response = await turn.answered(StreamingResponse(engine(), media_type="text/event-stream"))
    assert isinstance(response, StreamingResponse)
    received = []
    async for chunk in response.body_iterator:
        if "response.completed" in str(chunk):
            assert (await store.get(auth.tenant_id, rid)).status == "completed"
        received.append(str(chunk))
    assert "[DONE]" not in "".join(received)  # OpenAI's Responses streams carry no end marker
    assert (await store.get(auth.tenant_id, rid)).response["output"][0]["content"][0]["text"] == "Hello"


async def test_a_stream_cut_short_is_stored_as_cancelled(db_pool: asyncpg.Pool) -> None:
    store = ResponseStore(db_pool)
    auth = await _auth(db_pool)
    turn, _, rid = await _turn(store, auth, {"model": "m", "input": "Hi", "stream": True})
    created = {**_response(rid, ""), "status": "in_progress", "output": [], "usage": None}
    closed = []

    async def engine() -> AsyncIterator[str]:
        try:
            yield _event("response.created", response=created) + _event("response.output_text.delta", delta="Hel")
            yield _event("response.output_text.delta", delta="lo")
        finally:
            closed.append(True)

    response = await turn.answered(StreamingResponse(engine(), media_type="text/event-stream"))
    assert isinstance(response, StreamingResponse)
    body = response.body_iterator
    await anext(body)  # type: ignore[call-overload]
    await body.aclose()  # type: ignore[attr-defined]
    assert closed == [True]  # the relay's stream is closed with the client's: the engine call ends
    assert (await store.get(auth.tenant_id, rid)).status == "cancelled"
