"""Pure parts of the vLLM adapter and the app config (the engine itself is tested in tests/serve)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from crosslogic.config import AppConfig
from crosslogic.engine.vllm_engine import _coalesce, _strip_usage, translate_vllm_error

CHUNK = 'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = 'data: {"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
DONE = "data: [DONE]\n\n"


RUNNING = (
    'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}],'
    '"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
)


def test_usage_chunk_is_counted_and_dropped_unless_asked() -> None:
    text, usage = _strip_usage([CHUNK, USAGE, DONE], keep_final=False, keep_continuous=False)
    assert usage == {"prompt_tokens": 7, "completion_tokens": 3}
    assert text == CHUNK + DONE
    text, usage = _strip_usage([CHUNK, USAGE, DONE], keep_final=True, keep_continuous=False)
    assert text == CHUNK + USAGE + DONE and usage is not None


def test_running_usage_is_read_from_every_chunk_and_stripped() -> None:
    text, usage = _strip_usage([RUNNING], keep_final=True, keep_continuous=False)
    assert usage == {"prompt_tokens": 7, "completion_tokens": 2}
    assert json.loads(text[len("data: "):]) == json.loads(CHUNK[len("data: "):])
    text, _ = _strip_usage([RUNNING], keep_final=True, keep_continuous=True)
    assert text == RUNNING


def test_content_mentioning_usage_is_not_mistaken_for_the_usage_chunk() -> None:
    tricky = 'data: ' + json.dumps({"choices": [{"delta": {"content": ',"usage":{ "choices":[]'}}]}) + "\n\n"
    text, usage = _strip_usage([tricky], keep_final=False, keep_continuous=False)
    assert usage is None and text == tricky


@pytest.mark.parametrize(
    ("status", "message", "expected_status", "code"),
    [
        (400, "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens", 400, "context_length_exceeded"),
        (400, "temperature must be non-negative", 400, "invalid_request"),
        (404, "The model `x` does not exist.", 404, "model_not_found"),
        (503, "overloaded", 503, "engine_overloaded"),
        (500, "CUDA error: device-side assert", 502, "engine_error"),
    ],
)
def test_vllm_errors_become_openai_errors(status: int, message: str, expected_status: int, code: str) -> None:
    kind, payload = translate_vllm_error(status, message, None)
    assert kind == "error"
    assert payload["status"] == expected_status
    assert payload["error"]["code"] == code
    if expected_status >= 500:
        assert "CUDA" not in payload["error"]["message"]  # engine internals never reach clients


def _model(name: str) -> dict[str, object]:
    return {"served_name": name, "source": "smollm2-135m"}


def test_app_config_defaults_and_validation() -> None:
    config = AppConfig.model_validate({"models": [_model("a")]})
    assert config.ingress.max_ongoing_requests > 5  # Serve's default of 5 would throttle everything
    assert config.router.policy == "least_loaded_p2c"
    assert config.ingress.engine_transport == "grpc"  # the faster hop to the first token
    assert config.limits.actor_stream is True  # admit 0.18 vs 1.3 ms through Ray actor calls
    assert config.limits.overlap_admission is False  # measured not to pay on 2 cores
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"models": [_model("a")], "ingress": {"engine_transport": "http"}})
    with pytest.raises(ValidationError, match="duplicate served_name"):
        AppConfig.model_validate({"models": [_model("a"), _model("a")]})
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"models": []})
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"models": [{**_model("a"), "engine": {"bogus": 1}}]})


def test_serve_config_yaml_is_a_valid_app_config() -> None:
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "deployments.app_builder:build_app"
    parsed = AppConfig.model_validate(app["args"])
    assert {m.task for m in parsed.models} == {"generate", "embed"}
    assert parsed.ingress.engine_transport == "grpc"
    assert config["http_options"]["port"] == 8000


async def _collect_batches(source: AsyncIterator[str]) -> tuple[list[list[str]], BaseException | None]:
    batches: list[list[str]] = []
    try:
        async for batch in _coalesce(source):
            batches.append(batch)
    except BaseException as exc:
        return batches, exc
    return batches, None


async def test_coalesce_relays_everything_in_order() -> None:
    async def source() -> AsyncIterator[str]:
        for i in range(5):
            yield str(i)
            if i % 2:
                await asyncio.sleep(0.01)

    batches, error = await asyncio.wait_for(_collect_batches(source()), timeout=5)
    assert error is None and [x for b in batches for x in b] == ["0", "1", "2", "3", "4"]


async def test_coalesce_ends_when_the_source_is_cancelled_from_inside() -> None:
    """vLLM's generator raises CancelledError when the engine aborts a request: the stream must
    end with an error, never wait forever."""

    async def source() -> AsyncIterator[str]:
        yield "a"
        await asyncio.sleep(0.01)
        raise asyncio.CancelledError

    batches, error = await asyncio.wait_for(_collect_batches(source()), timeout=5)
    assert batches == [["a"]] and isinstance(error, RuntimeError)


async def test_coalesce_surfaces_engine_errors() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        raise ValueError("engine failed")

    _, error = await asyncio.wait_for(_collect_batches(source()), timeout=5)
    assert isinstance(error, ValueError)
