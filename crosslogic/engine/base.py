"""The engine interface: everything engine-specific stays behind it.

An engine runs one model and answers OpenAI-shaped requests as a stream of events. Events are small
tuples rather than pydantic models because one is sent per generated token step across a process
boundary, where every microsecond counts:

- ``("chunk", str, usage | None[, timing])``: SSE text to relay to the client as is (one or more
  ``data: ...\\n\\n`` events), with the engine's running usage so far (prompt / completion tokens);
  the first chunk of a stream adds ``{ENGINE_FIRST_MS: ms}``, the engine's own time from the
  request's arrival to that chunk (the ``engine`` stage of the ingress's Server-Timing header)
- ``("response", dict)``: the whole JSON body of a non-streaming response
- ``("error", dict)``: an OpenAI error body plus ``status`` (the request failed)
- ``("usage", dict)``: ``prompt_tokens`` / ``completion_tokens`` as the engine counted them; always
  the last event of a finished request, sent whether or not the client asked for usage
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from pydantic import BaseModel

from crosslogic.config import PrefixCacheScope

# "responses": the Responses API (stateless at the engine: the ingress stores and chains responses).
Endpoint = Literal["chat", "completions", "embeddings", "responses"]
EngineEvent = tuple[Any, ...]

CHUNK = "chunk"
RESPONSE = "response"
ERROR = "error"
USAGE = "usage"
ENGINE_FIRST_MS = "first_ms"


class ChunkEvents:
    """Builds one stream's chunk events: the first carries the engine's time from the request's
    arrival to it (`ENGINE_FIRST_MS`), the rest only text and usage. Every engine streams this way."""

    __slots__ = ("_arrived", "_clock", "_first")

    def __init__(self, arrived: float, clock: Callable[[], float]) -> None:
        self._arrived, self._clock, self._first = arrived, clock, True

    def chunk(self, text: str, usage: dict[str, int] | None) -> EngineEvent:
        if self._first:
            self._first = False
            return (CHUNK, text, usage, {ENGINE_FIRST_MS: round((self._clock() - self._arrived) * 1000, 3)})
        return (CHUNK, text, usage)


class EngineStats(BaseModel):
    """Queue state an engine reports to the router."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    # Requests this engine process is handling (accepted but not finished), as the adapter counts them.
    in_flight: int = 0
    # Prefix cache since the engine started, in prompt tokens: looked up, and found cached (vLLM's
    # PrefixCacheStats queries / hits): what prefix-aware routing gains is measured, not assumed.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


class ModelCard(BaseModel):
    served_name: str
    task: Literal["generate", "embed"]
    max_model_len: int
    source: str
    # The deployment's `prefix_cache_scope`: the ingress salts requests by it (crosslogic/api/cache_salt.py).
    prefix_cache_scope: PrefixCacheScope = "tenant"


class Engine(abc.ABC):
    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    @abc.abstractmethod
    def model_card(self) -> ModelCard: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine cannot serve."""

    def unfinished_requests(self) -> int:
        """Requests accepted and not finished, as the engine itself counts them."""
        return self.stats().in_flight

    @abc.abstractmethod
    def generate(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[EngineEvent]:
        """Serve one request. Closing the iterator early aborts the request in the engine."""
