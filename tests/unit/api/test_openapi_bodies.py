"""The OpenAPI document describes the request bodies the /v1 routes validate by hand."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.openapi_bodies import json_body
from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


def _context() -> ApiContext:
    # The document needs no dependency: none of them is touched until a request arrives.
    return ApiContext(gateway=None, authenticator=None, usage=None, max_body_bytes=1024, retries_before_first_token=0)  # type: ignore[arg-type]


def _document() -> dict[str, Any]:
    return build_api(_context()).openapi()


async def test_served_document_has_each_inference_body() -> None:
    transport = httpx.ASGITransport(app=build_api(_context()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/openapi.json")  # no credentials: the document is public
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path, model in (
        ("/v1/chat/completions", ChatCompletionRequest),
        ("/v1/completions", CompletionRequest),
        ("/v1/embeddings", EmbeddingRequest),
    ):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert set(schema["required"]) == set(model.model_json_schema()["required"])
        assert "$defs" not in str(schema) and "$ref" not in str(schema)
        assert {"400", "401", "404", "413", "429"} <= set(paths[path]["post"]["responses"])


def test_nested_models_are_inlined() -> None:
    messages = _document()["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["messages"]
    assert messages["items"]["properties"]["role"]["enum"][:2] == ["system", "developer"]


class Node(BaseModel):
    name: str
    children: list[Node] = []


def test_recursive_model_stops_at_an_open_object() -> None:
    schema = json_body(Node)["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["name"]["type"] == "string"
    assert schema["properties"]["children"]["items"] == {"type": "object"}
