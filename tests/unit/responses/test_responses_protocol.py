"""Pure parts of the Responses API: ids, the request model, conversation history and stream events."""

from __future__ import annotations

import json

import pytest

from crosslogic.api.body import parse
from crosslogic.api.request_ids import mint_request_id
from crosslogic.errors import InvalidRequestError
from crosslogic.protocol.responses import ResponsesRequest
from crosslogic.responses.events import CREATED, STREAM_END, TERMINAL, find_response, is_failure, without_end
from crosslogic.responses.history import as_items
from crosslogic.responses.ids import request_id_of, response_id


def test_response_ids_map_to_request_ids_both_ways() -> None:
    request_id = mint_request_id()
    rid = response_id(request_id)
    assert rid.startswith("resp_") and rid[5:] == request_id[4:]
    assert request_id_of(rid) == request_id
    with pytest.raises(ValueError):
        response_id("client-chosen")
    with pytest.raises(ValueError):
        request_id_of("resp_nothex")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["hi"]}, "input"),
        ({"model": "m", "input": 42}, "input"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "hi", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "hi", "store": "maybe"}, "store"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(body: dict[str, object], param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse(ResponsesRequest, body)
    assert caught.value.status_code == 400
    assert caught.value.param == param


def test_defaults_store_and_keep_the_engine_fields() -> None:
    parsed = parse(ResponsesRequest, {"model": "m", "input": "hi", "text": {"format": {"type": "text"}}})
    assert parsed.store is True and parsed.stream is False
    assert parsed.model_extra == {"text": {"format": {"type": "text"}}}


def test_string_input_is_one_user_message() -> None:
    assert as_items("hi") == [{"type": "message", "role": "user", "content": "hi"}]
    items = [{"role": "user", "content": "a"}]
    assert as_items(items) == items and as_items(items) is not items


def _event(kind: str, **data: object) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def test_events_are_found_in_coalesced_chunks() -> None:
    chunk = (
        _event("response.created", response={"id": "a", "status": "in_progress"})
        + _event("response.output_text.delta", delta="event: response.completed\n")  # text, not an event
        + _event("response.completed", response={"id": "a", "status": "completed"})
        + STREAM_END
    )
    assert find_response(chunk, CREATED) == {"id": "a", "status": "in_progress"}
    assert find_response(chunk, TERMINAL) == {"id": "a", "status": "completed"}
    assert find_response(_event("response.output_text.delta", delta="x"), TERMINAL) is None
    assert without_end(chunk).endswith("\n\n") and "[DONE]" not in without_end(chunk)
    assert not is_failure(chunk)
    assert is_failure('data: {"error": {"message": "engine failed"}}\n\n')
