"""Hand-written hostile requests no schema describes: nesting depth, sizes around the body limit,
encodings, extreme numbers and JSON's non-standard literals, duplicate keys, NUL bytes and lone
surrogates, and header values (authorization, x-request-id, x-client-request-id, content-type,
content-length) that are odd, long, non-ASCII or malformed; plus requests the ingress accepts and
the engine's own checks refuse.

Each case is bytes on the wire (see raw_http.py). `expect`, when set, is the set of statuses a
correct server may answer; the general property (no 5xx, OpenAI error shape) applies to all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Headers = list[tuple[bytes, bytes]]
# TEST-NET-3 (RFC 5737): the address the bad-key cases claim to come from.
FUZZ_CLIENT = b"203.0.113.77"
# Tiny answers: the engines must not be what the suite waits for.
HELLO = [{"role": "user", "content": "Hi"}]


@dataclass
class RawCase:
    name: str
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    method: str = "POST"
    path: str = "/v1/chat/completions"
    # False: the case sets its own Content-Length (or Transfer-Encoding) header.
    content_length: bool = True
    # The body is shorter than declared: close our side so the server stops waiting for the rest;
    # hanging up without an answer is then acceptable.
    half_close: bool = False
    expect: frozenset[int] | None = None
    # Carries no valid key (kept few: failed authentication is throttled per address).
    bad_key: bool = False
    # Not valid HTTP/1.1 (RFC 9110/9112: a control character in a field value, line folding, a
    # malformed or conflicting length): the HTTP server in front of the app (HAProxy on the stack)
    # refuses it before the app sees it, with a 400 in its own words, not OpenAI's shape.
    framing: bool = False


def _ok(*statuses: int) -> frozenset[int]:
    return frozenset(statuses)


OK_OR_400 = _ok(200, 400)


def chat(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, "max_tokens": 2, **fields}


def dumps(value: Any) -> bytes:
    # allow_nan: NaN/Infinity literals are the point of some cases; ensure_ascii keeps lone
    # surrogates as \\udXXX escapes, which is how a client sends them.
    return json.dumps(value, allow_nan=True).encode()


def _with_field(model: str, name: str, raw_value: bytes) -> bytes:
    """A valid chat body plus `"name": <raw_value>` spliced in as bytes (for literals json.dumps
    cannot produce: huge digit strings, duplicate keys, invalid UTF-8)."""
    return dumps(chat(model))[:-1] + b', "' + name.encode() + b'": ' + raw_value + b"}"


def depth_cases(model: str) -> list[RawCase]:
    return [
        RawCase("100,000 unclosed [", b"[" * 100_000, expect=_ok(400)),
        RawCase("50,000 unclosed objects", b'{"a":' * 50_000, expect=_ok(400)),
        RawCase("extra field nested 5,000 deep", _with_field(model, "x", b"[" * 5000 + b"]" * 5000), expect=_ok(400)),
        RawCase("extra field nested 500 deep", _with_field(model, "x", b"[" * 500 + b"]" * 500), expect=OK_OR_400),
        RawCase("content nested 300 deep", dumps(chat(model, messages=[{"role": "user", "content": _nest(300)}])), expect=_ok(400)),
        RawCase(
            "content part with a 300-deep object",
            dumps(chat(model, messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "x": _nest_obj(300)}]}])),
            expect=OK_OR_400,
        ),
    ]


def _nest(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _nest_obj(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _padded(model: str, size: int) -> bytes:
    body = dumps(chat(model))
    return body[:-1] + b" " * (size - len(body)) + b"}"  # JSON whitespace: cheap for the engine


def size_cases(model: str, limit: int) -> list[RawCase]:
    over = _padded(model, 2 * limit)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (over[i:i + 65536] for i in range(0, len(over), 65536)))
    return [
        RawCase("body one byte under the limit", _padded(model, limit - 1), expect=_ok(200)),
        RawCase("body exactly at the limit", _padded(model, limit), expect=_ok(200)),
        RawCase("body one byte over the limit", _padded(model, limit + 1), expect=_ok(413)),
        RawCase(
            "chunked body twice the limit",
            chunked + b"0\r\n\r\n",
            headers=[(b"transfer-encoding", b"chunked")],
            content_length=False,
            expect=_ok(413),
        ),
        RawCase("empty body", b"", expect=_ok(400)),
        RawCase("100,000-character message", dumps(chat(model, messages=[{"role": "user", "content": "ab " * 33_000}])), expect=_ok(200, 400)),
        RawCase("2,049 embedding inputs", dumps({"model": "all-minilm-l6-v2", "input": ["a"] * 2049}), path="/v1/embeddings", expect=_ok(400)),
    ]


def encoding_cases(model: str) -> list[RawCase]:
    text = json.dumps(chat(model))
    return [
        RawCase("UTF-16 with BOM", text.encode("utf-16"), expect=OK_OR_400),
        RawCase("UTF-16-BE without BOM", text.encode("utf-16-be"), expect=OK_OR_400),
        RawCase("UTF-32", text.encode("utf-32"), expect=OK_OR_400),
        RawCase("UTF-8 BOM", b"\xef\xbb\xbf" + text.encode(), expect=OK_OR_400),
        RawCase("invalid UTF-8 in a string", _with_field(model, "user", b'"\xff\xfe\xc3"'), expect=_ok(400)),
        RawCase("Latin-1 body", json.dumps(chat(model, user="caf\u00e9"), ensure_ascii=False).encode("latin-1"), expect=_ok(400)),
        RawCase("UTF-8-encoded surrogate in content", dumps(chat(model))[:-1] + b', "user": "\xed\xa0\x80"}', expect=OK_OR_400),
        RawCase(
            "charset=utf-16 on a UTF-8 body",
            text.encode(),
            headers=[(b"content-type", b"application/json; charset=utf-16")],
            expect=OK_OR_400,
        ),
    ]


def number_cases(model: str) -> list[RawCase]:
    def field_case(name: str, raw: str, expect: frozenset[int] | None = OK_OR_400) -> RawCase:
        return RawCase(f"{name}: {raw[:40]}", _with_field(model, name, raw.encode()), expect=expect)

    return [
        field_case("max_tokens", "-1", _ok(400)),
        field_case("max_tokens", "0", _ok(400)),
        field_case("max_tokens", "-0", _ok(400)),
        field_case("max_tokens", "2.0"),
        field_case("max_tokens", "2.5", _ok(400)),
        field_case("max_tokens", "1e0"),
        field_case("max_tokens", "1e400", _ok(400)),
        field_case("max_tokens", "NaN", _ok(400)),
        field_case("max_tokens", "true"),
        field_case("temperature", "NaN"),
        field_case("temperature", "Infinity", _ok(400)),
        field_case("temperature", "-Infinity", _ok(400)),
        field_case("temperature", "1e-320"),
        field_case("top_p", "NaN"),
        field_case("n", "2.0"),
        field_case("n", "1e1"),  # 10.0: an integral number, read as 10
        field_case("seed", str(2**63)),
        field_case("seed", str(-(2**63) - 1)),
        field_case("seed", str(10**100)),
        field_case("seed", "-1"),
        field_case("seed", "1" * 4000),
        field_case("seed", "1.5", _ok(400)),
        field_case("logprobs", "true"),
        field_case("top_logprobs", str(10**9)),
        field_case("x_extra", "NaN"),
        field_case("x_extra", "-" + "9" * 4000),
        field_case("x_extra", "1e999999"),
        RawCase("5,000-digit integer", _with_field(model, "x_extra", b"1" * 5000), expect=_ok(400)),
        RawCase(
            "embeddings dimensions 10**20",
            dumps({"model": "all-minilm-l6-v2", "input": "hi", "dimensions": 10**20}),
            path="/v1/embeddings",
            expect=_ok(400),
        ),
    ]


def string_cases(model: str) -> list[RawCase]:
    def body_case(name: str, body: dict[str, Any], expect: frozenset[int] | None = OK_OR_400, path: str = "/v1/chat/completions") -> RawCase:
        return RawCase(name, dumps(body), path=path, expect=expect)

    return [
        RawCase("duplicate model key (last wins)", dumps(chat("nope"))[:-1] + b', "model": "' + model.encode() + b'"}', expect=_ok(200)),
        RawCase("duplicate messages key", _with_field(model, "messages", b'"x"'), expect=_ok(400)),
        RawCase("duplicate max_tokens key", _with_field(model, "max_tokens", b"3"), expect=_ok(200)),
        body_case("NUL in content", chat(model, messages=[{"role": "user", "content": "a\u0000b"}])),
        body_case("NUL model", chat("\u0000"), _ok(400, 404)),
        body_case("model with a trailing NUL", chat(model + "\u0000"), _ok(400, 404)),
        body_case("NUL in role", chat(model, messages=[{"role": "user\u0000", "content": "Hi"}]), _ok(400)),
        body_case("NUL in user", chat(model, user="\u0000")),
        body_case("lone surrogate in content", chat(model, messages=[{"role": "user", "content": "\ud800"}])),
        body_case("lone surrogate in a content part", chat(model, messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}])),
        body_case("lone surrogate model", chat("\udfff"), _ok(400, 404)),
        body_case("lone surrogate in stop", chat(model, stop=["\ud800"])),
        body_case("lone surrogate in user", chat(model, user="\ud800")),
        body_case("lone surrogate as a key", {**chat(model), "\ud800": 1}),
        body_case("lone surrogate in role", chat(model, messages=[{"role": "\ud800", "content": "Hi"}]), _ok(400)),
        body_case("lone surrogate completion prompt", {"model": model, "prompt": "\ud800", "max_tokens": 2}, path="/v1/completions"),
        body_case("lone surrogate embedding input", {"model": "all-minilm-l6-v2", "input": "\ud800"}, path="/v1/embeddings"),
        body_case("NUL embedding input", {"model": "all-minilm-l6-v2", "input": ["\u0000"]}, path="/v1/embeddings"),
        body_case("token ids out of the vocabulary", {"model": model, "prompt": [10**9, -1], "max_tokens": 2}, _ok(400), "/v1/completions"),
        body_case("token id 2**63", {"model": model, "prompt": [2**63], "max_tokens": 2}, _ok(400), "/v1/completions"),
        body_case("empty token list", {"model": model, "prompt": [[]], "max_tokens": 2}, _ok(400), "/v1/completions"),
        body_case("response_format of an unknown type", chat(model, response_format={"type": "\u0000"}), _ok(400)),
        body_case("JSON array body", [chat(model)], _ok(400)),  # type: ignore[arg-type]
        RawCase("JSON null body", b"null", expect=_ok(400)),
        RawCase("JSON string body", b'"hello"', expect=_ok(400)),
        RawCase("trailing garbage", dumps(chat(model)) + b"}}", expect=_ok(400)),
    ]


def engine_cases(model: str) -> list[RawCase]:
    """Valid for the ingress, refused by the engine's own checks (vLLM's request validators): each
    must come back as the engine's 400, not as an exception."""

    def case(name: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> RawCase:
        return RawCase(name, dumps(body), path=path, expect=OK_OR_400)

    completion = {"model": model, "prompt": "Hi", "max_tokens": 2}
    return [
        case("empty completion prompt", {**completion, "prompt": ""}, "/v1/completions"),
        case("empty completion prompt list", {**completion, "prompt": [""]}, "/v1/completions"),
        case("top_logprobs without logprobs", chat(model, top_logprobs=2)),
        case("min_tokens above max_tokens", chat(model, min_tokens=10)),
        case("stream_options without stream", chat(model, stream_options={"include_usage": True})),
        case("logit_bias with a non-token key", chat(model, logit_bias={"abc": 1})),
        case("best_of below n", {**completion, "n": 2, "best_of": 1}, "/v1/completions"),
        case("negative truncate_prompt_tokens", {**completion, "truncate_prompt_tokens": -5}, "/v1/completions"),
        case("echo with logprobs", {**completion, "echo": True, "logprobs": 3}, "/v1/completions"),
        case("suffix", {**completion, "suffix": "x"}, "/v1/completions"),
        case("tool_choice without tools", chat(model, tool_choice="required")),
        case("json_schema response_format without schema", chat(model, response_format={"type": "json_schema"})),
        case("structured output of an invalid regex", chat(model, structured_outputs={"regex": "("})),
        case("embeddings of an empty string", {"model": "all-minilm-l6-v2", "input": ""}, "/v1/embeddings"),
        case("embeddings of token ids out of the vocabulary", {"model": "all-minilm-l6-v2", "input": [10**9]}, "/v1/embeddings"),
    ]


def header_cases(model: str, key: str) -> list[RawCase]:
    body = dumps(chat(model))
    bearer = b"Bearer " + key.encode()

    def with_headers(name: str, headers: Headers, expect: frozenset[int] | None = None, **kw: Any) -> RawCase:
        return RawCase(name, body, headers=headers, expect=expect, **kw)

    odd_ids = [
        b"a b", b"#x", "caf\u00e9".encode(), "\u4e2d\u6587".encode(), b"\xff\xfe", b"x" * 129, b"x" * 8000,
        b"../../etc/passwd", b"'; DROP TABLE usage_ledger; --", b"%00", b"\t x \t", b"",
    ]
    cases = [
        with_headers(f"x-request-id {value[:20]!r} ({len(value)} bytes)", [(b"authorization", bearer), (b"x-request-id", value)], _ok(200, 400))
        for value in odd_ids
    ]
    cases += [
        with_headers(f"x-client-request-id {value[:20]!r} ({len(value)} bytes)", [(b"authorization", bearer), (b"x-client-request-id", value)], _ok(200, 400))
        for value in odd_ids
    ]
    cases += [
        # DEL (0x7f) is not a field-value character (RFC 9110 5.5).
        with_headers("x-request-id DEL", [(b"authorization", bearer), (b"x-request-id", b"\x7f")], _ok(400), framing=True),
        with_headers("two x-request-id headers", [(b"authorization", bearer), (b"x-request-id", b"a"), (b"x-request-id", b"b")], _ok(200, 400)),
        with_headers("x-request-id with a bare CR", [(b"authorization", bearer), (b"x-request-id", b"a\rb")], _ok(400), framing=True),
        with_headers("x-request-id with a NUL", [(b"authorization", bearer), (b"x-request-id", b"a\x00b")], _ok(400), framing=True),
        # Obsolete line folding: refused (uvicorn) or unfolded into one space (HAProxy, RFC 9112 5.2).
        with_headers("x-request-id folded over two lines", [(b"authorization", bearer), (b"x-request-id", b"a\r\n b")], _ok(200, 400), framing=True),
        with_headers("authorization with a trailing space", [(b"authorization", bearer + b" ")], _ok(200, 401)),
        with_headers("authorization with two spaces", [(b"authorization", b"Bearer  " + key.encode())], _ok(200, 401), bad_key=True),
        with_headers("authorization in lower case", [(b"authorization", b"bearer " + key.encode())], _ok(200, 401), bad_key=True),
        with_headers("authorization non-ASCII", [(b"authorization", "Bearer sk-cl-\u00e9\u00e9\u00e9".encode())], _ok(401, 429), bad_key=True),
        with_headers("authorization 10,000 bytes", [(b"authorization", b"Bearer " + b"x" * 10_000)], _ok(400, 401, 429, 431), bad_key=True),
        # Past the front server's header buffer (HAProxy's 16 KiB): refused there, in its words.
        with_headers("authorization 100,000 bytes", [(b"authorization", b"Bearer " + b"x" * 100_000)], _ok(400, 401, 429, 431), bad_key=True, framing=True),
        with_headers("authorization Basic", [(b"authorization", b"Basic dXNlcjpwYXNz")], _ok(401, 429), bad_key=True),
        with_headers("authorization with a bare CR", [(b"authorization", bearer + b"\rx")], _ok(400), framing=True),
        with_headers("authorization with a NUL", [(b"authorization", bearer + b"\x00")], _ok(400), framing=True),
        with_headers("two authorization headers", [(b"authorization", bearer), (b"authorization", b"Bearer sk-cl-wrong")], _ok(200, 400, 401, 429), bad_key=True),
        with_headers("no authorization", [], _ok(401), bad_key=True),
        with_headers("content-type text/plain", [(b"authorization", bearer), (b"content-type", b"text/plain")], _ok(200, 400, 415)),
        with_headers("content-type form", [(b"authorization", bearer), (b"content-type", b"application/x-www-form-urlencoded")], _ok(200, 400, 415)),
        with_headers("content-type multipart", [(b"authorization", bearer), (b"content-type", b"multipart/form-data; boundary=x")], _ok(200, 400, 415)),
        with_headers("content-type non-ASCII", [(b"authorization", bearer), (b"content-type", "application/j\u00e9son".encode())], _ok(200, 400, 415)),
        with_headers("content-type 10,000 bytes", [(b"authorization", bearer), (b"content-type", b"application/json; x=" + b"y" * 10_000)], _ok(200, 400, 415, 431)),
        with_headers("content-length shorter than the body", [(b"authorization", bearer), (b"content-length", str(len(body) - 10).encode())], _ok(400), content_length=False),
        with_headers(
            "content-length longer than the body", [(b"authorization", bearer), (b"content-length", str(len(body) + 10).encode())],
            _ok(400), content_length=False, half_close=True,
        ),
        with_headers("content-length not a number", [(b"authorization", bearer), (b"content-length", b"abc")], _ok(400), framing=True, content_length=False),
        with_headers("content-length negative", [(b"authorization", bearer), (b"content-length", b"-1")], _ok(400), framing=True, content_length=False),
        with_headers("content-length 10**25", [(b"authorization", bearer), (b"content-length", b"1" + b"0" * 25)], _ok(400, 413), framing=True, content_length=False, half_close=True),
        with_headers(
            "two different content-lengths",
            [(b"authorization", bearer), (b"content-length", str(len(body)).encode()), (b"content-length", b"5")],
            _ok(400), framing=True, content_length=False,
        ),
        with_headers(
            "content-length and chunked",
            [(b"authorization", bearer), (b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            _ok(400), framing=True, content_length=False, half_close=True,
        ),
    ]
    return cases


def model_route_cases(key: str) -> list[RawCase]:
    bearer = b"Bearer " + key.encode()
    return [
        RawCase("GET /v1/models with a body", b"\xff" * 100, headers=[(b"authorization", bearer)], method="GET", path="/v1/models", expect=_ok(200)),
        RawCase("model id with a NUL", headers=[(b"authorization", bearer)], method="GET", path="/v1/models/a%00b", expect=_ok(400, 404)),
        RawCase("model id with a surrogate", headers=[(b"authorization", bearer)], method="GET", path="/v1/models/%ED%A0%80", expect=_ok(400, 404)),
        RawCase("model id of 10,000 bytes", headers=[(b"authorization", bearer)], method="GET", path="/v1/models/" + "m" * 10_000, expect=_ok(400, 404, 414)),
        RawCase("query of 10,000 bytes", headers=[(b"authorization", bearer)], method="GET", path="/v1/models?q=" + "q" * 10_000, expect=_ok(200, 414)),
    ]


def all_cases(model: str, key: str, limit: int) -> list[RawCase]:
    auth = [(b"authorization", b"Bearer " + key.encode()), (b"content-type", b"application/json")]
    with_key = [*depth_cases(model), *size_cases(model, limit), *encoding_cases(model), *number_cases(model), *string_cases(model),
                *engine_cases(model)]
    for case in with_key:
        case.headers = [*auth, *case.headers] if not any(name == b"content-type" for name, _ in case.headers) else [auth[0], *case.headers]
    cases = [*with_key, *header_cases(model, key), *model_route_cases(key)]
    for case in cases:
        if case.bad_key:
            # Spent from an address of their own (the suite trusts one X-Forwarded-For hop), not
            # the loopback budget every other test's first use of a new key draws on.
            case.headers = [*case.headers, (b"x-forwarded-for", FUZZ_CLIENT)]
    return cases
