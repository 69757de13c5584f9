"""The engine side's event text, from vLLM's own Responses event objects (the engine runs in tests/serve)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.responses import ResponseTextDeltaEvent

from crosslogic.engine.vllm_responses import _events_text
from crosslogic.responses.events import STREAM_END, TERMINAL, find_response

# Importing vLLM's protocol (inside the tests) imports torch, whose own deprecations are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")


def _response(status: str) -> Any:
    from vllm.entrypoints.openai.responses.protocol import ResponsesResponse

    return ResponsesResponse(
        id="resp_" + "a" * 32, model="m", output=[], parallel_tool_calls=True, temperature=1.0, tool_choice="auto",
        tools=[], top_p=1.0, background=False, max_output_tokens=16, service_tier="auto", status=status,
        truncation="disabled", kv_transfer_params={"vllm": "only"},
    )


def _delta(text: str, n: int) -> ResponseTextDeltaEvent:
    return ResponseTextDeltaEvent(
        type="response.output_text.delta", sequence_number=n, content_index=0, output_index=0, item_id="msg_1",
        delta=text, logprobs=[],
    )


async def _vllm_events() -> AsyncIterator[Any]:
    from vllm.entrypoints.openai.responses.protocol import (
        ResponseCompletedEvent,
        ResponseCreatedEvent,
        ResponseInProgressEvent,
    )

    yield ResponseCreatedEvent(type="response.created", sequence_number=0, response=_response("in_progress"))
    yield ResponseInProgressEvent(type="response.in_progress", sequence_number=1, response=_response("in_progress"))
    yield _delta("Hel", 2)
    yield _delta("lo", 3)
    yield ResponseCompletedEvent(type="response.completed", sequence_number=4, response=_response("completed"))


async def test_the_preamble_travels_with_the_first_token_and_the_end_is_marked() -> None:
    chunks = [chunk async for chunk in _events_text(_vllm_events(), "resp_" + "b" * 32)]
    assert len(chunks) == 3
    first = chunks[0]
    assert first.startswith("event: response.created\ndata: ") and "event: response.output_text.delta\n" in first
    assert chunks[1].startswith("event: response.output_text.delta\n")
    assert chunks[-1].startswith("event: response.completed\n") and chunks[-1].endswith(STREAM_END)
    final = find_response(chunks[-1], TERMINAL)
    assert final is not None and final["status"] == "completed"
    assert final["previous_response_id"] == "resp_" + "b" * 32  # echoed, as OpenAI's response says it
    assert "kv_transfer_params" not in final  # vLLM's own fields stay out of OpenAI's object
    for chunk in chunks:
        for block in chunk.removesuffix(STREAM_END).split("\n\n")[:-1]:
            kind, data = block.split("\n", 1)
            assert json.loads(data.removeprefix("data: "))["type"] == kind.removeprefix("event: ")
