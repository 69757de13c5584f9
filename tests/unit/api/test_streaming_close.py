"""A streaming response settles on every exit, including a client gone before the first chunk.

Drives `_ClosingStreamingResponse` through the ASGI calls Starlette makes (no server): the client
disconnect arrives as `http.disconnect` on `receive`, or as a failing `send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from crosslogic.api.relay import _ClosingStreamingResponse

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "POST", "path": "/"}


class Probe:
    def __init__(self) -> None:
        self.started = False
        self.generator_finally = False
        self.closed = 0
        self.sent: list[dict[str, Any]] = []

    async def body(self, chunks: int, pause_s: float = 0.0) -> AsyncIterator[str]:
        self.started = True
        try:
            for i in range(chunks):
                await asyncio.sleep(pause_s)
                yield f"data: {i}\n\n"
        finally:
            self.generator_finally = True

    async def on_close(self) -> None:
        self.closed += 1

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def test_client_gone_before_the_first_chunk_still_settles() -> None:
    probe = Probe()

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)  # the disconnect listener wins before any body is pulled
        probe.sent.append(message)

    response = _ClosingStreamingResponse(probe.body(3), probe.on_close, media_type="text/event-stream")
    await response(SCOPE, receive, send)
    assert not probe.started  # the generator's own `finally` never ran ...
    assert probe.closed == 1  # ... so on_close settled


async def test_disconnect_mid_stream_closes_generator_and_settles() -> None:
    probe = Probe()
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        probe.sent.append(message)
        if message.get("body"):
            disconnected.set()

    response = _ClosingStreamingResponse(probe.body(1000, 0.01), probe.on_close, media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, receive, send), timeout=5)
    assert probe.started and probe.generator_finally
    assert probe.closed == 1


async def test_cancelled_while_sending_settles() -> None:
    probe = Probe()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    response = _ClosingStreamingResponse(probe.body(1000, 0.01), probe.on_close, media_type="text/event-stream")
    task = asyncio.ensure_future(response(SCOPE, receive, probe.send))
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert probe.generator_finally and probe.closed == 1


async def test_normal_end_closes_once() -> None:
    probe = Probe()

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    response = _ClosingStreamingResponse(probe.body(3), probe.on_close, media_type="text/event-stream")
    await response(SCOPE, receive, probe.send)
    assert [m["body"] for m in probe.sent if m.get("body")] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert probe.generator_finally and probe.closed == 1


async def test_stream_ends_at_done_without_waiting_for_the_transport() -> None:
    """The transport's end-of-stream was seen to arrive 120 s late under load: `[DONE]` ends it."""
    from crosslogic.api.relay import Outcome, _stream
    from crosslogic.engine.base import CHUNK

    closed = 0

    async def close() -> None:
        nonlocal closed
        closed += 1

    async def events() -> AsyncIterator[tuple[Any, ...]]:
        yield (CHUNK, 'data: {"choices":[{"delta":{"content":"!"}}]}\n\ndata: [DONE]\n\n', {"prompt_tokens": 3, "completion_tokens": 2})
        await asyncio.Event().wait()  # the end-of-stream that never comes

    outcome = Outcome()
    first = (CHUNK, 'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', {"prompt_tokens": 3, "completion_tokens": 1})
    body = [c async for c in _stream_with_deadline(_stream(first, events(), outcome, close, "req-1"))]
    assert body[-1].endswith("data: [DONE]\n\n")
    assert outcome.status == "finished" and outcome.completion_tokens == 2
    assert closed == 1


async def _stream_with_deadline(stream: AsyncIterator[str], deadline_s: float = 5.0) -> AsyncIterator[str]:
    while True:
        try:
            yield await asyncio.wait_for(anext(stream), deadline_s)
        except StopAsyncIteration:
            return


class _StuckOnClose:
    """A gateway whose engine stream answers, then hangs when closed (a stuck transport)."""

    def models(self) -> list[Any]:
        return []

    async def readiness(self) -> Any:
        raise NotImplementedError

    async def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
                     hints: Any) -> AsyncIterator[Any]:
        from crosslogic.engine.base import CHUNK

        try:
            yield (CHUNK, 'data: {"n":1}\n\n', {"prompt_tokens": 3, "completion_tokens": 1})
            yield (CHUNK, "data: [DONE]\n\n", {"prompt_tokens": 3, "completion_tokens": 1})
            await asyncio.sleep(3600)  # the end that never comes
        finally:
            await asyncio.sleep(3600)  # and a close that never finishes


async def test_a_stuck_engine_stream_close_holds_neither_the_response_end_nor_the_settlement(
    monkeypatch: Any,
) -> None:
    from crosslogic.api import relay as relay_module

    monkeypatch.setattr(relay_module, "_CLOSE_ENGINE_STREAM_S", 0.2)
    settled: list[Any] = []

    async def settle(outcome: Any) -> None:
        settled.append(outcome)

    response = await relay_module.relay(
        _StuckOnClose(), "m", "chat", {"stream": True}, "req_stuck", stream=True, retries=0, settle=settle)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(response(SCOPE, receive, send), timeout=5)
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert b"[DONE]" in b"".join(m.get("body", b"") for m in sent)
    assert len(settled) == 1 and settled[0].status == "finished" and settled[0].completion_tokens == 1
