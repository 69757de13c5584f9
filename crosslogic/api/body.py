"""Reading and validating request bodies: size limit, JSON, then the OpenAI model."""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from crosslogic.api.errors import validation_error
from crosslogic.errors import InvalidRequestError, PayloadTooLargeError

M = TypeVar("M", bound=BaseModel)


def _invalid_json(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"request body is not valid JSON: {message}", code="invalid_json")


def _refuse_constant(name: str) -> NoReturn:
    # json.loads accepts NaN and +/-Infinity, which JSON does not: they would reach arithmetic (and
    # an engine) as numbers no comparison refuses.
    raise _invalid_json(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 parses as inf
        raise _invalid_json(f"number {text[:40]} is out of range")
    return value


# A surrogate can only arrive as a `\udXXX` escape or as UTF-8-encoded surrogate bytes (json.loads
# decodes with surrogatepass): only a body containing one of these needs its strings checked.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _lone_surrogate(data: Any) -> bool:
    """Whether any string in `data` holds an unpaired surrogate (json.loads joins valid pairs): it
    cannot be encoded as UTF-8, so a tokenizer, PostgreSQL or the error response would fail on it."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


# Far deeper than any real request (a JSON schema in `tools` or `response_format` nests a few dozen
# levels); a deeper body parses, but Ray's transport to the engine (pickle) fails on it near 450.
MAX_DEPTH = 128
_CONTAINERS = frozenset({list, dict})


def _deeper_than(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        # C-speed skip of the common leaf lists (token ids, strings): no Python loop over them.
        if _CONTAINERS.isdisjoint(map(type, children)):
            continue
        stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)
    return False


def loads(raw: bytes) -> Any:
    """`json.loads` for a client's bytes: every way it can fail is a 400 `invalid_json`."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid_json(str(exc)) from None
    except RecursionError:
        raise _invalid_json("nested too deeply") from None
    except ValueError as exc:  # an integer past Python's int max_str_digits (4300 digits)
        raise _invalid_json(f"a number is out of range ({exc})") from None
    # Nesting needs at least that many brackets: most bodies are never walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(data, MAX_DEPTH):
        raise _invalid_json(f"nested deeper than {MAX_DEPTH} levels")
    if _MAYBE_SURROGATE.search(raw) and _lone_surrogate(data):
        raise _invalid_json("a string contains an unpaired UTF-16 surrogate (not valid Unicode)")
    return data


async def read_capped(request: Request, max_bytes: int) -> bytes:
    """The raw body, or 413 as soon as it (or its declared length) passes `max_bytes`."""
    declared = request.headers.get("content-length")
    # isascii: "²".isdigit() is true; the length check keeps int() off a 5,000-digit header.
    if declared is not None and declared.isascii() and declared.isdigit() and (
        len(declared) > 18 or int(declared) > max_bytes
    ):
        raise PayloadTooLargeError(f"request body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    raw = await read_capped(request, max_bytes)
    if not raw:
        raise InvalidRequestError("request body is empty; send a JSON object", code="invalid_json")
    data = loads(raw)
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object", code="invalid_json")
    return data


def parse(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
