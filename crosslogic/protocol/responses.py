"""The Responses API request (POST /v1/responses), checked at the ingress.

As for chat (crosslogic/protocol/openai.py): what the ingress relies on is validated here (model,
stream, store, the output budget that decides token reservation, the continuation id) and the rest
is kept for the engine's own, complete Responses layer (input items, text formats, tools).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crosslogic.errors import InvalidRequestError
from crosslogic.protocol.openai import INT32_MAX, INT64_MAX, INT64_MIN

# Features of OpenAI's Responses API this deployment does not offer: refused by name, never ignored
# (a client that sets them expects a behaviour it would not be getting).
_UNSUPPORTED = {
    "background": "background responses are not supported; send the request without 'background'",
    "conversation": "conversations are not supported; continue a response with 'previous_response_id'",
}


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool = False
    # OpenAI's default: a response is stored unless the client says otherwise.
    store: bool = True
    previous_response_id: str | None = Field(default=None, max_length=256)
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        # Checked before the union so the 400 names `input`, not a branch of it (`input.str`).
        if not isinstance(value, str | list) or value == []:
            raise InvalidRequestError(
                "input must be a string or a non-empty list of input items", param="input", code="invalid_value"
            )
        if isinstance(value, list) and not all(isinstance(item, dict) for item in value):
            raise InvalidRequestError("each input item must be an object", param="input", code="invalid_value")
        return value

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        for name, message in _UNSUPPORTED.items():
            if (self.model_extra or {}).get(name) not in (None, False):
                raise InvalidRequestError(message, param=name, code="unsupported_parameter")
        return self
