"""Function calling on the shipped configuration, end to end with the official `openai` client:
SmolLM2 with the packaged Hermes-style template, vLLM's hermes parser and guided decoding, as
serve_config.yaml sets them (the session stack is built from that file).

A 135M model's words are not reliable, so no generated text is compared. Shapes are: a required or
named call always carries a JSON object of arguments valid against its tool's schema (the grammar
holds the model to it); `auto` answers with either text or parsed calls; the prompt the engine
built is checked token for token against the template rendered here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from crosslogic.engine.chat_templates import chat_template_path
from tests.serve.conftest import CHAT_MODEL, ServeStack
from tests.serve.test_metering_end_to_end import _usage_row

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "An IANA name, e.g. Europe/Paris"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
ASK_TWO = [{"role": "user", "content": "What is the weather in Paris, and what time is it in Tokyo?"}]
# Enough room for a couple of calls; a call cut short by max_tokens would not parse.
ROOM = 160
# Greedy decoding: these tests check the API's handling of calls, not a 135M model's sampling. Sampled at
# temperature 1, a tool_choice="required" answer once came back without a call (one CI run in many; the
# cause was not kept); greedy makes each run the same.
GREEDY = {"temperature": 0.0}
# One streamed call the model must make (one at a time), usage in the last chunk.
REQUIRED_CALL_STREAM: dict[str, Any] = {
    "model": CHAT_MODEL,
    "messages": ASK,
    "tools": TOOLS,
    "tool_choice": "required",
    "parallel_tool_calls": False,
    "max_tokens": ROOM,
    "stream": True,
    "stream_options": {"include_usage": True},
    **GREEDY,
}


@pytest.fixture(scope="module")
def client(serve_stack: ServeStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=serve_stack.api_key, max_retries=0, timeout=120) as c:
        yield c


def valid_call(tool_call: Any, names: set[str] | None = None) -> tuple[str, dict[str, Any]]:
    """A parsed call as OpenAI shapes it: an id, type function, a known name and a JSON object of
    arguments its tool's schema accepts. Returns (name, arguments)."""
    assert tool_call.type == "function" and tool_call.id
    name = tool_call.function.name
    assert name in (names or set(SCHEMAS)), name
    arguments = json.loads(tool_call.function.arguments)
    assert isinstance(arguments, dict)
    jsonschema.validate(arguments, SCHEMAS[name])
    return name, arguments


def chat(client: openai.OpenAI, **kwargs: Any) -> tuple[Any, str]:
    """(completion, request id): the id names the request's row in the usage ledger."""
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, **{"max_tokens": ROOM, **GREEDY, **kwargs})
    return raw.parse(), raw.headers["x-request-id"]


def prompt_tokens(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """Tokens of the prompt the shipped template makes of these messages, as the engine renders it
    (vLLM hands a template each call's arguments decoded: a dict, not the client's JSON string)."""
    decoded = json.loads(json.dumps(messages))
    for message in decoded:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    ids = tokenizer.apply_chat_template(
        decoded,
        tools=tools,
        chat_template=chat_template_path("smollm2_tools").read_text(),
        add_generation_prompt=True,
        tokenize=True,
    )
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_required_makes_one_schema_valid_call(client: openai.OpenAI, chat_tokenizer: Any) -> None:
    completion, _ = chat(client, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls or []) == 1
    valid_call(choice.message.tool_calls[0])
    assert not choice.message.content
    # The engine rendered the tools into the prompt exactly as the packaged template does.
    assert completion.usage.prompt_tokens == prompt_tokens(chat_tokenizer, ASK, TOOLS)


def test_required_with_parallel_calls_allowed_makes_one_or_more_valid_calls(client: openai.OpenAI) -> None:
    completion, _ = chat(client, messages=ASK_TWO, tools=TOOLS, tool_choice="required")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert len(calls) >= 1
    for call in calls:
        valid_call(call)
    assert len({c.id for c in calls}) == len(calls)


def test_named_choice_calls_that_function(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    completion, _ = chat(client, messages=ASK, tools=TOOLS, tool_choice=named)
    choice = completion.choices[0]
    # OpenAI ends a named call with "stop", not "tool_calls".
    assert choice.finish_reason == "stop"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert valid_call(calls[0], {"get_time"})[0] == "get_time"


@pytest.mark.parametrize(
    ("messages", "choice"),
    [
        (ASK, {"tool_choice": "auto"}),
        (ASK_TWO, {"tool_choice": "auto"}),
        ([{"role": "user", "content": "Say hello."}], {}),
    ],
    ids=["weather", "two-questions", "tool-choice-left-out-means-auto"],
)
def test_auto_answers_with_text_or_valid_calls(
    client: openai.OpenAI, messages: list[dict[str, Any]], choice: dict[str, Any]
) -> None:
    completion, _ = chat(client, messages=messages, tools=TOOLS, **choice)
    choice = completion.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            valid_call(call)
    else:
        # A 135M model often just answers: plain text, nothing parsed as a call.
        assert isinstance(choice.message.content, str) and choice.message.content
        assert choice.finish_reason in {"stop", "length"}


def test_none_answers_in_text_without_the_tools_in_the_prompt(client: openai.OpenAI, chat_tokenizer: Any) -> None:
    completion, _ = chat(client, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=24)
    choice = completion.choices[0]
    assert not choice.message.tool_calls
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    # tool_calling.exclude_tools_when_none: the prompt is the one without tools.
    assert completion.usage.prompt_tokens == prompt_tokens(chat_tokenizer, ASK, None)
    assert completion.usage.prompt_tokens < prompt_tokens(chat_tokenizer, ASK, TOOLS)


def test_streamed_call_deltas_assemble_into_valid_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(**REQUIRED_CALL_STREAM)
    calls: dict[int, dict[str, Any]] = {}
    finish: list[str] = []
    argument_pieces = 0
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                finish.append(choice.finish_reason)
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "type": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or delta.id
                call["type"] = call["type"] or delta.type
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
                    argument_pieces += 1
    assert finish == ["tool_calls"]
    assert list(calls) == [0]
    call = calls[0]
    assert call["id"] and call["type"] == "function" and call["name"] in SCHEMAS
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, SCHEMAS[call["name"]])
    # Streamed as it was generated, not in one piece at the end.
    assert argument_pieces > 1
    assert usage is not None and usage.completion_tokens > 0


def test_a_tool_result_fed_back_reaches_the_model(client: openai.OpenAI, chat_tokenizer: Any) -> None:
    first, _ = chat(
        client, messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    call = first.choices[0].message.tool_calls[0]
    valid_call(call, {"get_weather"})
    # The assistant's turn goes back as OpenAI's clients send it (content None, the call with its
    # id and arguments as a JSON string), then the tool's result for that id.
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "clear"})},
    ]
    second, _ = chat(client, messages=messages, tools=TOOLS, tool_choice="auto")
    choice = second.choices[0]
    if choice.message.tool_calls:
        for again in choice.message.tool_calls:
            valid_call(again)
    else:
        assert isinstance(choice.message.content, str) and choice.message.content
    # Token for token the prompt the template renders with the call and its <tool_response>.
    assert second.usage.prompt_tokens == prompt_tokens(chat_tokenizer, messages, TOOLS)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_stock_price"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ],
    ids=["named-function-not-in-tools", "required-without-tools", "unknown-choice"],
)
def test_a_bad_tool_choice_is_an_openai_400(client: openai.OpenAI, request_fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, max_tokens=4, **request_fields)
    error = refused.value
    assert error.type == "invalid_request_error" and error.param == param
    assert isinstance(error.code, str) and error.message


async def test_tool_calls_are_metered_like_any_chat(client: openai.OpenAI, database_url: str) -> None:
    completion, request_id = chat(client, messages=ASK, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert completion.choices[0].message.tool_calls
    row = await _usage_row(database_url, request_id)
    assert row["model"] == CHAT_MODEL and row["status"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )

    with client.chat.completions.with_streaming_response.create(**REQUIRED_CALL_STREAM) as response:
        request_id = response.headers["x-request-id"]
        usage = [
            json.loads(line[len("data: ") :])["usage"]
            for line in response.iter_lines()
            if line.startswith("data: {") and '"usage":{' in line
        ]
    row = await _usage_row(database_url, request_id)
    assert row["status"] == "finished"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage[-1]["prompt_tokens"],
        usage[-1]["completion_tokens"],
    )
