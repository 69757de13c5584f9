"""Hostile and careless input through the real stack (HAProxy -> ingress -> vLLM): a clear 400 in
OpenAI's shape, never a 5xx, and no ERROR traceback in the serve logs for a client's mistake."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
COMPLETION = {"model": CHAT_MODEL, "prompt": "Hi", "max_tokens": 2}
EMBEDDING = {"model": EMBED_MODEL, "input": "Hi"}

# (name, path, body: dict or raw bytes, extra headers, expected param or None for "any/none")
CASES: list[tuple[str, str, Any, dict[str, Any], str | None]] = [
    ("request id non-ascii", "chat/completions", CHAT, {"x-request-id": "r\u00e9q-\u00fc".encode()}, "x-request-id"),
    ("client id non-ascii", "chat/completions", CHAT, {"x-client-request-id": "\u00e9".encode()}, "x-client-request-id"),
    ("request id too long", "chat/completions", CHAT, {"x-request-id": "r" * 600}, "x-request-id"),
    ("max_tokens 10**13", "chat/completions", {**CHAT, "max_tokens": 10**13}, {}, "max_tokens"),
    ("n 16 x max_tokens 10**11", "chat/completions", {**CHAT, "n": 16, "max_tokens": 10**11}, {}, "max_tokens"),
    ("max_tokens above context", "chat/completions", {**CHAT, "max_tokens": 10**6}, {}, "max_tokens"),
    ("max_completion_tokens 10**13", "chat/completions", {**CHAT, "max_completion_tokens": 10**13}, {},
     "max_completion_tokens"),
    ("completion max_tokens 10**13", "completions", {**COMPLETION, "max_tokens": 10**13}, {}, "max_tokens"),
    ("deep nesting", "chat/completions", b"[" * 100_000, {}, None),
    ("5000-digit integer", "chat/completions",
     b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": %s}'
     % (CHAT_MODEL.encode(), b"1" * 5000), {}, None),
    ("NaN", "chat/completions", json.dumps({**CHAT, "temperature": float("nan")}).encode(), {}, None),
    ("Infinity", "chat/completions", json.dumps({**CHAT, "frequency_penalty": float("inf")}).encode(), {}, None),
    ("1e309", "chat/completions", json.dumps(CHAT).replace('"max_tokens": 2', '"max_tokens": 2, "top_k": 1e309').encode(),
     {}, None),
    ("seed beyond int64", "chat/completions", {**CHAT, "seed": 2**70}, {}, "seed"),
    ("top_logprobs huge", "chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 10**12}, {}, "top_logprobs"),
    ("top_logprobs without logprobs", "chat/completions", {**CHAT, "top_logprobs": 2}, {}, "top_logprobs"),
    ("logprobs huge", "completions", {**COMPLETION, "logprobs": 10**12}, {}, "logprobs"),
    # vLLM's V1 engine ignores best_of (n sequences are generated, and reserved): harmless.
    ("best_of huge", "completions", {**COMPLETION, "n": 2, "best_of": 10**12}, {}, "*ok*"),
    ("nested 900 deep in content", "chat/completions", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "extra": json.loads("[" * 900 + "]" * 900)}]}]}, {}, None),
    ("logit_bias huge key", "chat/completions", {**CHAT, "logit_bias": {str(10**30): 1}}, {}, "logit_bias"),
    ("prompt token id huge", "completions", {**COMPLETION, "prompt": [10**20]}, {}, "prompt"),
    ("prompt token id negative", "completions", {**COMPLETION, "prompt": [-5, 3]}, {}, "prompt"),
    ("prompt token ids huge nested", "completions", {**COMPLETION, "prompt": [[1, 2**63]]}, {}, "prompt"),
    ("embedding token id huge", "embeddings", {**EMBEDDING, "input": [[10**20]]}, {}, "input"),
    ("embedding token id negative", "embeddings", {**EMBEDDING, "input": [-1]}, {}, "input"),
    ("dimensions huge", "embeddings", {**EMBEDDING, "dimensions": 10**20}, {}, "dimensions"),
    ("lone surrogate", "chat/completions",
     b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 2}' % CHAT_MODEL.encode(),
     {}, None),
    ("NUL in content", "chat/completions", {**CHAT, "messages": [{"role": "user", "content": "a\u0000b"}]}, {},
     "*ok*"),
]


def _serve_log_bytes(stack: ServeStack) -> dict[Path, int]:
    root = Path(stack.cluster.temp_dir or "")
    return {p: p.stat().st_size for p in root.glob("session_latest/logs/serve/*.log")}


def _new_error_lines(stack: ServeStack, before: dict[Path, int]) -> list[str]:
    lines: list[str] = []
    for path in _serve_log_bytes(stack):
        with path.open("rb") as f:
            f.seek(before.get(path, 0))
            text = f.read().decode(errors="replace")
        lines += [f"{path.name}: {line}" for line in text.splitlines()
                  if line.startswith("ERROR") or "Traceback" in line]
    return lines


@pytest.fixture(scope="module")
def http(serve_stack: ServeStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_stack.openai_base, headers=serve_stack.auth_headers, timeout=120) as client:
        yield client


def _send(http: httpx.Client, path: str, body: Any, headers: dict[str, Any]) -> httpx.Response:
    if isinstance(body, bytes):
        return http.post(path, content=body, headers={"content-type": "application/json", **headers})
    return http.post(path, json=body, headers=headers)


def test_hostile_input_gets_a_400_never_a_500(serve_stack: ServeStack, http: httpx.Client) -> None:
    before = _serve_log_bytes(serve_stack)
    failures: list[str] = []
    for name, path, body, headers, param in CASES:
        resp = _send(http, path, body, headers)
        if param == "*ok*":  # harmless for us: served, or refused with a 400 — never a 5xx
            if resp.status_code not in (200, 400):
                failures.append(f"{name}: {resp.status_code} {resp.text[:200]}")
            continue
        if resp.status_code != 400:
            failures.append(f"{name}: {resp.status_code} {resp.text[:200]}")
            continue
        error = resp.json().get("error", {})
        if set(error) != {"message", "type", "param", "code"} or error["type"] != "invalid_request_error":
            failures.append(f"{name}: not OpenAI-shaped: {resp.text[:200]}")
        elif param is not None and error["param"] != param:
            failures.append(f"{name}: param {error['param']!r}, expected {param!r}: {error['message'][:120]}")
        elif "Traceback" in resp.text:
            failures.append(f"{name}: traceback sent to the client")
    assert not failures, "\n".join(failures)
    errors = _new_error_lines(serve_stack, before)
    assert not errors, "\n".join(errors[:20])


def test_printable_client_ids_are_accepted_and_echoed(serve_stack: ServeStack, http: httpx.Client) -> None:
    """"a b" and "#x" are odd but harmless ASCII: kept as the client's id, echoed, never a 500."""
    before = _serve_log_bytes(serve_stack)
    for value in ("a b", "#x", "x" * 512):
        resp = http.post("chat/completions", json=CHAT, headers={"x-request-id": value})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-client-request-id"] == value
        assert re.fullmatch(r"req_[0-9a-f]{32}", resp.headers["x-request-id"]), resp.headers.get_list("x-request-id")
    assert not _new_error_lines(serve_stack, before)
