"""The Responses API on vLLM: served by vLLM's own `OpenAIServingResponses` (input items, chat
template, text formats, tools and the streaming event sequence are vLLM's), adapted to engine events.

The ingress resolves everything stateful before a request gets here: a `previous_response_id`'s
history is already in `input`, and storing the response is the ingress's job. So the engine never
stores anything (vLLM's in-memory store would be per replica and per process) and any replica can
serve any turn of a conversation. The response is named after the request (crosslogic/responses/ids.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from crosslogic.engine.base import CHUNK, ENGINE_FIRST_MS, RESPONSE, USAGE, EngineEvent
from crosslogic.responses.events import STREAM_END
from crosslogic.responses.ids import response_id

# Events vLLM emits before the first generated token. Held back and sent with it, so the first
# event the ingress sees is the first token (its TTFT) or an error (its HTTP status), as for chat.
_PREAMBLE = frozenset({
    "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    "response.reasoning_part.added",
})
# vLLM's last event: held to travel with the end marker (one message, and the relay settles on it).
_LAST = "response.completed"
# The fields of vLLM's response object that OpenAI's has not (vLLM leaves them None unless asked).
_VLLM_ONLY = frozenset({"kv_transfer_params", "ec_transfer_params", "input_messages", "output_messages", "metrics"})

Refuse = Callable[[Exception], EngineEvent]
Fail = Callable[[Any, Exception], EngineEvent]
Translate = Callable[[int, str, "str | None"], EngineEvent]


class TokenCount:
    """Tokens vLLM processed for one response so far (all its engine sub-requests)."""

    __slots__ = ("completion", "prompt")

    def __init__(self) -> None:
        self.prompt: dict[str, int] = {}
        self.completion = 0

    def add(self, sub_request: str, output: Any) -> None:
        self.prompt[sub_request] = len(output.prompt_token_ids or ())
        # Responses run vLLM in DELTA (stream) or FINAL_ONLY mode: each output holds new tokens only.
        self.completion += len(output.outputs[0].token_ids or ()) if output.outputs else 0

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": sum(self.prompt.values()), "completion_tokens": self.completion}


class CountingEngineClient:
    """vLLM's engine client as `OpenAIServingResponses` sees it, counting each response's tokens.

    vLLM's Responses events carry no running usage (only the final event has it), yet a stream the
    client cuts short must still be metered with what was generated: the count is taken where the
    engine's outputs pass (`EngineClient.generate`, a public interface), keyed by the response id
    vLLM's sub-request ids (`<response id>_<turn>`) start with.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._counts: dict[str, TokenCount] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def open(self, response: str) -> TokenCount:
        count = self._counts[response] = TokenCount()
        return count

    def close(self, response: str) -> None:
        self._counts.pop(response, None)

    async def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *args: Any, **kwargs: Any
    ) -> AsyncIterator[Any]:
        count = self._counts.get(request_id.rpartition("_")[0])
        outputs = self._inner.generate(prompt, sampling_params, request_id, *args, **kwargs)
        try:
            async for output in outputs:
                if count is not None:
                    count.add(request_id, output)
                yield output
        finally:
            # Closing vLLM's generator aborts the request in the engine (no orphaned generation).
            await outputs.aclose()


def counting_client(serving: Any) -> CountingEngineClient:
    """The counting client of vLLM's Responses serving object, installed on first use."""
    client = serving.engine_client
    if not isinstance(client, CountingEngineClient):
        client = serving.engine_client = CountingEngineClient(client)
    return client


def _echo_previous(event: Any, previous: str | None) -> None:
    """The response object says which response it continues, as OpenAI's does: the ingress turned
    `previous_response_id` into input before vLLM saw the request."""
    response = getattr(event, "response", None)
    if response is not None:
        response.previous_response_id = previous


def response_json(response: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = response.model_dump(mode="json", by_alias=True, exclude=_VLLM_ONLY)
    return dumped


def sse_event(event: Any) -> str:
    """One Responses stream event in SSE form, as OpenAI sends it: `event:` names its type."""
    exclude = {"response": _VLLM_ONLY} if getattr(event, "response", None) is not None else None
    return f"event: {event.type}\ndata: {event.model_dump_json(indent=None, by_alias=True, exclude=exclude)}\n\n"


async def _events_text(events: AsyncGenerator[Any, None], previous: str | None) -> AsyncIterator[str]:
    held: list[str] = []
    try:
        async for event in events:
            _echo_previous(event, previous)
            text = sse_event(event)
            if event.type in _PREAMBLE or event.type == _LAST:
                held.append(text)
                continue
            if held:
                text, held = "".join(held) + text, []
            yield text
        # The relay's end marker: it settles now rather than at the transport's end-of-stream.
        yield "".join(held) + STREAM_END
    finally:
        await events.aclose()  # vLLM's generator: closing it aborts the engine request


async def serve_responses(
    serving: Any,
    body: dict[str, Any],
    request_id: str,
    arrived: float,
    *,
    refuse: Refuse,
    fail: Fail,
    translate: Translate,
    coalesce: Callable[[AsyncIterator[str]], AsyncIterator[list[str]]],
) -> AsyncIterator[EngineEvent]:
    """Serve one Responses request. `refuse` maps a request vLLM's validation refused, `fail` an
    exception vLLM's serving raised, `translate` vLLM's error response, each to an error event."""
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest, ResponsesResponse
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.exceptions import VLLMClientError

    previous = body.get("previous_response_id")
    rid = response_id(request_id)
    # Never stored here (see the module docstring); the id is the server's, never the client's.
    body = {**body, "request_id": rid, "store": False, "background": False, "previous_response_id": None}
    try:
        request = ResponsesRequest.model_validate(body)
    except (ValueError, VLLMClientError) as exc:
        yield refuse(exc)
        return
    client = counting_client(serving)
    count = client.open(rid)
    try:
        try:
            result = await serving.create_responses(request, raw_request=None)
        except Exception as exc:  # vLLM's own mapping decides client (4xx) vs engine (5xx) failure
            yield fail(serving, exc)
            return
        if isinstance(result, ErrorResponse):
            yield translate(int(result.error.code), result.error.message, result.error.param)
            return
        if isinstance(result, ResponsesResponse):
            result.previous_response_id = previous
            payload = response_json(result)
            yield (RESPONSE, payload)
            usage = payload.get("usage") or {}
            yield (USAGE, {
                "prompt_tokens": int(usage.get("input_tokens") or 0),
                "completion_tokens": int(usage.get("output_tokens") or 0),
            } if usage else count.usage())
            return
        first = True
        try:
            async for batch in coalesce(_events_text(result, previous)):
                # Every chunk carries the running usage: a stream cut short is metered with it.
                if first:
                    first = False
                    took = round((time.perf_counter() - arrived) * 1000, 3)
                    yield (CHUNK, "".join(batch), count.usage(), {ENGINE_FIRST_MS: took})
                else:
                    yield (CHUNK, "".join(batch), count.usage())
        except Exception as exc:
            yield fail(serving, exc)
            return
        yield (USAGE, count.usage())
    finally:
        client.close(rid)
