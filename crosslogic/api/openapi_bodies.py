"""OpenAPI documentation of request bodies the /v1 routes read themselves.

The inference routes read the raw request (the key is checked before the body is even read, and
the body has its own size limit), so FastAPI sees no body parameter and would document none: API
users, client generators and our fuzz suite would all learn nothing. `json_body` documents the
pydantic model the route actually validates with, without FastAPI parsing anything.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from crosslogic.api.errors import error_responses

# What an inference route can answer besides its result, each in OpenAI's error shape.
ERRORS = error_responses(400, 401, 403, 404, 413, 429)
_LOCAL_REF = "#/$defs/"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra=` declaring `model` as the required `application/json` request body."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    # Inlined: `openapi_extra` is merged into the operation as is, and a `#/$defs/...` reference
    # would point nowhere in the OpenAPI document (its components are FastAPI's to fill).
    body = _inline(schema, defs, seen=())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_LOCAL_REF):
        name = ref[len(_LOCAL_REF):]
        if name in seen:  # a recursive model: stop at an open object rather than loop
            return {"type": "object"}
        rest = {key: value for key, value in node.items() if key != "$ref"}
        return _inline({**defs[name], **rest}, defs, (*seen, name))
    return {key: _inline(value, defs, seen) for key, value in node.items()}
