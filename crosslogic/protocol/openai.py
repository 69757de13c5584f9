"""OpenAI request models, checked at the ingress before anything reaches an engine.

They validate what the ingress itself relies on (model, stream, limits that decide token
reservation) and the common client mistakes, then keep every other field (`extra="allow"`) for the
engine's own, complete OpenAI layer: one source of truth for sampling semantics, no drift.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crosslogic.errors import InvalidRequestError

_PASS_THROUGH = ConfigDict(extra="allow")
# Integers a client sends reach arithmetic (token reservation), Redis, PostgreSQL int4 and the
# engine's C++ and torch code: bounded here so a huge one is a 400 naming its field, not a 500.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_token_ids(value: Any, param: str) -> None:
    """Token ids in a prompt or input (`[1, 2]` or `[[1, 2], [3]]`) must be ids, not any integer:
    a negative or huge one reached the engine's tensors. The model's vocabulary the engine checks."""
    if not isinstance(value, list):
        return
    for i, item in enumerate(value):
        for j, token in enumerate(item if isinstance(item, list) else [item]):
            if isinstance(token, int) and not 0 <= token <= INT32_MAX:
                where = f"{param}.{i}.{j}" if isinstance(item, list) else f"{param}.{i}"
                # Raised as is (not a ValueError): pydantic would bury it under every union branch.
                raise InvalidRequestError(
                    f"invalid token id {token} at '{where}': token ids are integers from 0 to {INT32_MAX}",
                    param=param,
                )


class StreamOptions(BaseModel):
    model_config = _PASS_THROUGH

    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = _PASS_THROUGH

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _GenerationRequest(BaseModel):
    model_config = _PASS_THROUGH

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _stop_list_size(self) -> _GenerationRequest:
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop: at most 16 sequences")
        return self

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    # The engine checks its own maximum (vLLM: 20, -1 = the whole vocabulary) but names `logprobs`.
    top_logprobs: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        # The engine's own rule (vLLM), checked here: the engine's refusal came back as a 500.
        wants = self.top_logprobs is not None and (self.top_logprobs == -1 or self.top_logprobs > 0)
        if wants and (self.model_extra or {}).get("logprobs") is not True:
            raise InvalidRequestError(
                "top_logprobs needs logprobs set to true", param="top_logprobs", code="invalid_value"
            )
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False

    @model_validator(mode="after")
    def _token_ids(self) -> CompletionRequest:
        check_token_ids(self.prompt, "prompt")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(BaseModel):
    model_config = _PASS_THROUGH

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    user: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _non_empty(self) -> EmbeddingRequest:
        if isinstance(self.input, list) and len(self.input) == 0:
            raise ValueError("input must not be empty")
        if isinstance(self.input, list) and len(self.input) > 2048:
            raise ValueError("input: at most 2048 items per request")
        check_token_ids(self.input, "input")
        return self


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "crosslogic"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
