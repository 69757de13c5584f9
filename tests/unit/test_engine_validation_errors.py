"""vLLM's own request validators raise VLLMValidationError, not a ValueError: the adapter must answer
them as the client's 400 (with the parameter), never let them escape as an engine exception (which the
ingress turned into a 500; found by the fuzz suite, tests/serve/test_fuzz_*.py)."""

from __future__ import annotations

from typing import Any

import pytest

from crosslogic.config import AppConfig
from crosslogic.engine.base import ERROR
from crosslogic.engine.vllm_engine import VLLMEngine

# Importing vLLM's protocol imports torch, whose own deprecations are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
COMPLETION = {"model": "m", "prompt": "Hi", "max_tokens": 2}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def _engine() -> VLLMEngine:
    config = AppConfig.model_validate({"models": [{"served_name": "m", "source": "m"}]}).models[0]
    return VLLMEngine(config, "/nonexistent")


@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        ("completions", {**COMPLETION, "prompt": ""}, "prompt"),
        ("chat", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("chat", {**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ("chat", {**CHAT, "tool_choice": "required"}, "tool_choice"),
        ("chat", {**CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
    ],
)
def test_vllm_validation_errors_are_the_clients_400(endpoint: str, body: dict[str, Any], param: str) -> None:
    engine = _engine()
    with pytest.raises(ValueError) as refused:
        engine._parse(endpoint, body)  # type: ignore[arg-type]
    event = engine._validation_error(refused.value)
    assert event[0] == ERROR and event[1]["status"] == 400
    error = event[1]["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "parameter=" not in error["message"]
