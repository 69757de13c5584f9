"""An engine SIMULATOR: the `Engine` interface with a real queue and a model of an engine's timing,
for routing benchmarks at hundreds of replicas. It generates no language; never a default (a model
runs it only with `engine: {kind: simulator}` in its config).

What it models, per replica, with asyncio's clock (so a benchmark may run it on a virtual clock):

- continuous batching: up to `max_batch` sequences run; one step decodes a token for each running
  sequence and prefills up to `max_batched_tokens` prompt tokens of admitted ones (chunked prefill);
  a step lasts prefill tokens / prefill speed + a decode step (1 / decode speed, more with batch);
- KV cache: a sequence is admitted only while the running ones' prompt + max tokens fit in
  `kv_cache_tokens`; the rest wait, first come first served;
- prefix cache: an LRU of block hashes (blocks of `block_tokens`), chained and salted by the
  request's cache_salt as vLLM's; the leading cached blocks of a prompt skip prefill, and the hits
  are counted as vLLM counts them (prompt tokens queried, tokens hit); a finished request's output
  is cached too, as the assistant message its conversation's next turn will send;
- tokens: no tokenizer; a token is `chars_per_token` characters of the rendered prompt.

Events are those of the vLLM adapter (crosslogic/engine/vllm_engine.py): OpenAI SSE chunks with the
running usage, the first one timed, `data: [DONE]` last; a response and its usage when not streamed;
OpenAI errors for what a real engine refuses (too long, embeddings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.base import (
    ERROR,
    RESPONSE,
    USAGE,
    ChunkEvents,
    Endpoint,
    Engine,
    EngineEvent,
    EngineStats,
    ModelCard,
)
from crosslogic.engine.simulator_config import SimulatorConfig
from crosslogic.routing.affinity_keys import prefix_hashes, rendered_prefix

_DONE = "data: [DONE]\n\n"
_WORD = "tok "


class _Sequence:
    __slots__ = (
        "arrived",
        "blocks",
        "cached_tokens",
        "cancelled",
        "finished",
        "generated",
        "max_tokens",
        "prefill_left",
        "prompt_tokens",
        "ready",
        "request_id",
    )

    def __init__(
        self, request_id: str, prompt_tokens: int, max_tokens: int, blocks: tuple[int, ...], arrived: float
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.blocks = blocks
        self.arrived = arrived
        self.prefill_left = prompt_tokens
        self.generated = 0
        self.cached_tokens = 0
        self.ready = asyncio.Event()
        self.finished = False
        self.cancelled = False

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.max_tokens


def _error(status: int, message: str, code: str, param: str | None) -> EngineEvent:
    return (ERROR, {"status": status, "error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}})


class SimulatorEngine(Engine):
    def __init__(self, config: ModelDeploymentConfig, replica_rank: int = 0) -> None:
        self._config = config
        self._sim = config.engine.simulator or SimulatorConfig()
        factors = self._sim.speed_factors
        self.speed_factor = factors[replica_rank % len(factors)] if factors else 1.0
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._running_kv = 0
        self._cache: OrderedDict[int, None] = OrderedDict()
        self._cache_blocks = max(1, self._sim.kv_cache_tokens // self._sim.block_tokens)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._prefix_queries = 0
        self._prefix_hits = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="engine-simulator")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def model_card(self) -> ModelCard:
        return ModelCard(
            served_name=self._config.served_name, task=self._config.task, max_model_len=self._sim.max_model_len,
            source=self._config.source, prefix_cache_scope=self._config.prefix_cache_scope,
        )

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running), waiting=len(self._waiting),
            kv_cache_usage=min(1.0, self._running_kv / self._sim.kv_cache_tokens),
            in_flight=self._in_flight,
            prefix_cache_queries=self._prefix_queries, prefix_cache_hits=self._prefix_hits,
        )

    def unfinished_requests(self) -> int:
        return len(self._running) + len(self._waiting)

    async def check_health(self) -> None:
        if self._task is None or self._task.done():
            raise RuntimeError("engine simulator not running")

    # -- the engine loop -------------------------------------------------------------------------

    def _admit(self) -> None:
        sim = self._sim
        while self._waiting and len(self._running) < sim.max_batch:
            seq = self._waiting[0]
            if seq.cancelled:
                self._waiting.popleft()
                continue
            if self._running and self._running_kv + seq.kv_tokens > sim.kv_cache_tokens:
                return  # first come first served: no one overtakes the head of the queue
            self._waiting.popleft()
            hits = 0
            for block in seq.blocks:
                if block not in self._cache:
                    break
                hits += 1
            for block in seq.blocks:
                self._cache[block] = None
                self._cache.move_to_end(block)
            while len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
            # As vLLM: the last prompt token is always computed (its logits start the output).
            seq.cached_tokens = min(hits * sim.block_tokens, seq.prompt_tokens - 1)
            seq.prefill_left = seq.prompt_tokens - seq.cached_tokens
            self._prefix_queries += seq.prompt_tokens
            self._prefix_hits += seq.cached_tokens
            self._running.append(seq)
            self._running_kv += seq.kv_tokens

    async def _run(self) -> None:
        sim = self._sim
        prefill_speed = sim.prefill_tokens_per_s * self.speed_factor
        decode_speed = sim.decode_tokens_per_s * self.speed_factor
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
            self._admit()
            if not self._running:
                continue
            decoding = [s for s in self._running if s.prefill_left == 0]
            budget = sim.max_batched_tokens - len(decoding)
            prefilled = 0
            first_tokens: list[_Sequence] = []
            for seq in self._running:
                if seq.prefill_left and budget > 0:
                    n = min(seq.prefill_left, budget)
                    seq.prefill_left -= n
                    budget -= n
                    prefilled += n
                    if seq.prefill_left == 0:
                        first_tokens.append(seq)
            step = prefilled / prefill_speed
            if decoding:
                step += (1.0 + sim.decode_batch_cost * (len(decoding) - 1)) / decode_speed
            await asyncio.sleep(step)
            interval = sim.stream_interval
            for seq in (*decoding, *first_tokens):
                seq.generated += 1
                if seq.generated >= seq.max_tokens:
                    seq.finished = True
                if seq.finished or seq.generated == 1 or seq.generated % interval == 0:
                    seq.ready.set()
            self._retire()

    def _retire(self) -> None:
        if any(s.finished or s.cancelled for s in self._running):
            kept = [s for s in self._running if not (s.finished or s.cancelled)]
            self._running_kv = sum(s.kv_tokens for s in kept)
            self._running = kept

    # -- requests --------------------------------------------------------------------------------

    def _prompt(self, endpoint: Endpoint, body: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
        sim = self._sim
        limit = sim.max_model_len * sim.chars_per_token + 1
        text_len = len(rendered_prefix(endpoint, body, limit))
        blocks = prefix_hashes(
            endpoint, body, block_chars=sim.block_tokens * sim.chars_per_token, max_chars=limit)
        return max(1, math.ceil(text_len / sim.chars_per_token)), blocks

    async def generate(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[EngineEvent]:
        if endpoint not in ("chat", "completions"):
            yield _error(400, f"Model {self._config.served_name!r} does not support {endpoint}.",
                         "model_not_supported", "model")
            return
        prompt_tokens, blocks = self._prompt(endpoint, body)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or self._sim.default_max_tokens)
        if prompt_tokens + max_tokens > self._sim.max_model_len:
            yield _error(400, f"This model's maximum context length is {self._sim.max_model_len} tokens; the "
                         f"request has {prompt_tokens} prompt tokens and asks for {max_tokens} more.",
                         "context_length_exceeded", "messages" if endpoint == "chat" else "prompt")
            return
        loop = asyncio.get_running_loop()
        seq = _Sequence(request_id, prompt_tokens, max_tokens, blocks, loop.time())
        self._in_flight += 1
        self._waiting.append(seq)
        self._wake.set()
        try:
            if body.get("stream"):
                async for event in self._stream(endpoint, body, seq):
                    if seq.finished and event[1].endswith(_DONE):
                        self._cache_output(endpoint, body, seq)
                    yield event
            else:
                while not seq.finished:
                    await seq.ready.wait()
                    seq.ready.clear()
                self._cache_output(endpoint, body, seq)
                yield (RESPONSE, self._response(endpoint, body, seq))
                yield (USAGE, {"prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.generated})
        finally:
            self._in_flight -= 1
            if not seq.finished:
                seq.cancelled = True  # the loop drops it (client gone: no orphaned generation)

    def _cache_output(self, endpoint: Endpoint, body: dict[str, Any], seq: _Sequence) -> None:
        """As vLLM keeps the blocks a request computed, its output's included: the next turn of a
        conversation, which sends this answer back as an assistant message, finds it cached."""
        reply = _WORD * seq.generated
        if endpoint == "chat":
            follow_up = {**body, "messages": [*(body.get("messages") or ()), {"role": "assistant", "content": reply}]}
        else:
            prompt = body.get("prompt")
            follow_up = {**body, "prompt": (prompt if isinstance(prompt, str) else "") + reply}
        sim = self._sim
        for block in prefix_hashes(endpoint, follow_up, block_chars=sim.block_tokens * sim.chars_per_token,
                                   max_chars=sim.max_model_len * sim.chars_per_token + 1):
            self._cache[block] = None
            self._cache.move_to_end(block)
        while len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)

    async def _stream(self, endpoint: Endpoint, body: dict[str, Any], seq: _Sequence) -> AsyncIterator[EngineEvent]:
        model = self._config.served_name
        if endpoint == "chat":
            head = (
                f'data: {{"id":"chatcmpl-{seq.request_id}","object":"chat.completion.chunk","model":"{model}",'
                '"choices":[{"index":0,"delta":{"content":"'
            )
        else:
            head = (
                f'data: {{"id":"cmpl-{seq.request_id}","object":"text_completion","model":"{model}",'
                '"choices":[{"index":0,"text":"'
            )
        options = body.get("stream_options") or {}
        sent = 0
        chunks = ChunkEvents(seq.arrived, asyncio.get_running_loop().time)
        while True:
            await seq.ready.wait()
            seq.ready.clear()
            new = seq.generated - sent
            sent = seq.generated
            text = f'{head}{_WORD * new}"}}}}]}}\n\n'
            usage = {"prompt_tokens": seq.prompt_tokens, "completion_tokens": sent}
            if seq.finished:
                finish: dict[str, Any] = {"index": 0, "finish_reason": "length"}
                if endpoint == "chat":
                    finish["delta"] = {}
                else:
                    finish["text"] = ""
                text += "data: " + json.dumps({"id": seq.request_id, "choices": [finish]}) + "\n\n"
                if options.get("include_usage"):
                    total = {**usage, "total_tokens": seq.prompt_tokens + sent}
                    text += "data: " + json.dumps({"id": seq.request_id, "choices": [], "usage": total}) + "\n\n"
                text += _DONE
            yield chunks.chunk(text, usage)
            if seq.finished:
                return

    def _response(self, endpoint: Endpoint, body: dict[str, Any], seq: _Sequence) -> dict[str, Any]:
        text = _WORD * seq.generated
        usage = {
            "prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.generated,
            "total_tokens": seq.prompt_tokens + seq.generated,
            "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
        }
        if endpoint == "chat":
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": text}}
            return {"id": f"chatcmpl-{seq.request_id}", "object": "chat.completion", "model": self._config.served_name,
                    "choices": [choice], "usage": usage}
        return {"id": f"cmpl-{seq.request_id}", "object": "text_completion", "model": self._config.served_name,
                "choices": [{"index": 0, "finish_reason": "length", "text": text}], "usage": usage}
