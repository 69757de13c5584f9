"""The shipped SmolLM2 tool template, rendered by the model's own tokenizer (transformers'
apply_chat_template, which vLLM calls), and how a config names a shipped template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.chat_templates import chat_template_path, packaged_templates
from crosslogic.engine.tool_calling import ToolCallingConfig

# Importing vLLM's parser and renderer imports torch, whose own modules warn on import.
VLLM_IMPORT = pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
TEMPLATE = chat_template_path("smollm2_tools").read_text()
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from crosslogic.devmodels.prepare import resolve_model_source
    from crosslogic.settings import Settings

    return AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m", Settings.from_env()))


def render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
           *, template: str = TEMPLATE, add_generation_prompt: bool = True) -> str:
    return str(tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    ))


def call(name: str, arguments: Any, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calling(*calls: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    """An assistant turn that calls tools (OpenAI's shape: content None when it only calls)."""
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


OSLO_AND_TIME = (call("get_weather", {"city": "Oslo"}, "call_1"), call("get_time", {}, "call_2"))


PLAIN_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "x"}],
]


@pytest.mark.parametrize("messages", PLAIN_CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_without_tools_renders_exactly_as_the_checkpoints_own_template(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool
) -> None:
    # Same prompt, same tokens: a chat without tools behaves (and hits the prefix cache) as before.
    own = render(tokenizer, messages, template=tokenizer.chat_template, add_generation_prompt=add_generation_prompt)
    assert render(tokenizer, messages, add_generation_prompt=add_generation_prompt) == own


def test_tools_are_listed_in_the_system_turn_one_json_object_a_line(tokenizer: Any) -> None:
    prompt = render(tokenizer, [{"role": "user", "content": "Weather in Paris?"}], [WEATHER, TIME])
    assert prompt.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM + "\n\n# Tools\n")
    listed = prompt.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in listed] == [WEATHER, TIME]
    assert "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>system") == 1


def test_the_clients_system_prompt_replaces_the_default_and_is_not_repeated(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "You are a weather bot."}, {"role": "user", "content": "Paris?"}]
    prompt = render(tokenizer, messages, [WEATHER])
    assert prompt.startswith("<|im_start|>system\nYou are a weather bot.\n\n# Tools\n")
    assert DEFAULT_SYSTEM not in prompt
    assert prompt.count("You are a weather bot.") == 1 and prompt.count("<|im_start|>system") == 1


def test_tool_fields_a_client_left_out_are_not_rendered_as_null(tokenizer: Any) -> None:
    # vLLM hands the template `tool.model_dump()`: unset fields arrive as None.
    bare = {"type": "function", "function": {"name": "ping", "description": None, "parameters": None, "strict": None}}
    prompt = render(tokenizer, [{"role": "user", "content": "x"}], [bare])
    assert '\n{"type": "function", "function": {"name": "ping"}}\n</tools>' in prompt
    assert "null" not in prompt


PARIS_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'


@pytest.mark.parametrize(
    ("turn", "rendered"),
    [
        (calling(call("get_weather", {"city": "Paris", "unit": "c"})), PARIS_CALL),
        (calling(call("get_weather", '{"city": "Paris", "unit": "c"}')), PARIS_CALL),
        (
            calling(*OSLO_AND_TIME, content="Checking."),
            'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
        ),
    ],
    ids=["only-a-call-arguments-dict-as-vllm-passes", "arguments-json-string-as-openai-sends", "content-and-parallel-calls"],
)
def test_an_assistant_turns_calls_render_in_the_parsers_format(tokenizer: Any, turn: dict[str, Any], rendered: str) -> None:
    prompt = render(tokenizer, [{"role": "user", "content": "Weather?"}, turn], [WEATHER, TIME], add_generation_prompt=False)
    assert prompt.endswith("<|im_start|>assistant\n" + rendered + "<|im_end|>\n")


def test_tool_results_go_back_as_tool_responses_in_one_user_turn(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "Weather and time?"},
        calling(*OSLO_AND_TIME),
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": -3}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "09:30"},
        {"role": "assistant", "content": "-3 C at 09:30."},
        {"role": "user", "content": "And Rome?"},
        calling(call("get_weather", {"city": "Rome"}, "call_3")),
        {"role": "tool", "tool_call_id": "call_3", "content": '{"temp_c": 14}'},
    ]
    prompt = render(tokenizer, messages, [WEATHER, TIME])
    assert (
        "</tool_call><|im_end|>\n<|im_start|>user\n"
        '<tool_response>\n{"temp_c": -3}\n</tool_response>\n<tool_response>\n09:30\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n-3 C at 09:30.<|im_end|>\n"
    ) in prompt
    assert prompt.endswith(
        "<|im_start|>user\n<tool_response>\n{\"temp_c\": 14}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert "<|im_start|>tool" not in prompt
    assert prompt.count("<|im_start|>") == 9  # system, user, assistant, user(results), assistant, user, assistant, user(result), prompt


@VLLM_IMPORT
def test_vllms_hermes_parser_reads_back_the_calls_the_template_renders(tokenizer: Any) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    calls = [call("get_weather", {"city": "Oslo", "unit": "f"}, "call_1"), call("get_time", {}, "call_2")]
    messages = [{"role": "user", "content": "?"}, calling(*calls)]
    prompt = render(tokenizer, messages, [WEATHER, TIME], add_generation_prompt=False)
    turn = prompt.rsplit("<|im_start|>assistant\n", 1)[1].removesuffix("<|im_end|>\n")
    request = ChatCompletionRequest(model="smollm2-135m", messages=[{"role": "user", "content": "?"}], tools=[WEATHER, TIME])
    parsed = Hermes2ProToolParser(tokenizer).extract_tool_calls(turn, request)
    assert parsed.tools_called and parsed.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Oslo", "unit": "f"}), ("get_time", {}),
    ]


@VLLM_IMPORT
def test_vllm_hands_this_template_string_content() -> None:
    # vLLM picks the content format from the template's shape: "string" flattens a client's text
    # parts into one string, which is all this template reads.
    from vllm.renderers.hf import _detect_content_format

    assert _detect_content_format(TEMPLATE, default="openai") == "string"


def test_shipped_templates_resolve_by_name_inside_the_package() -> None:
    assert "smollm2_tools" in packaged_templates()
    path = chat_template_path("smollm2_tools")
    assert path.is_file() and path.parent.name == "chat_templates" and path.parent.parent.name == "engine"
    assert chat_template_path("/srv/templates/custom.jinja") == Path("/srv/templates/custom.jinja")


@pytest.mark.parametrize(("ref", "message"), [
    ("smollm2_tool", "shipped ones are smollm2_tools"),
    ("templates/custom.jinja", "absolute path"),
])
def test_a_config_naming_no_shipped_template_nor_an_absolute_path_is_refused(ref: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelDeploymentConfig.model_validate({"served_name": "m", "source": "m", "engine": {"chat_template": ref}})


def test_engine_arguments_carry_the_template_and_the_tool_parser(tmp_path: Path) -> None:
    from crosslogic.engine.vllm_engine import VLLMEngine

    config = ModelDeploymentConfig.model_validate({
        "served_name": "smollm2-135m", "source": "smollm2-135m",
        "engine": {"chat_template": "smollm2_tools", "tool_calling": {"parser": "hermes"}},
    })
    args = VLLMEngine(config, str(tmp_path))._engine_args()
    assert args.chat_template == str(chat_template_path("smollm2_tools"))
    assert (args.tool_call_parser, args.tool_strict_level) == ("hermes", "parameter")
    assert args.enable_auto_tool_choice and args.exclude_tools_when_tool_choice_none

    plain = ModelDeploymentConfig.model_validate({"served_name": "m", "source": "m"})
    args = VLLMEngine(plain, str(tmp_path))._engine_args()
    assert args.chat_template is None and args.tool_call_parser is None and not args.enable_auto_tool_choice


def test_a_missing_template_file_is_named_when_the_engine_starts(tmp_path: Path) -> None:
    from crosslogic.engine.vllm_engine import VLLMEngine
    from crosslogic.errors import ConfigError

    config = ModelDeploymentConfig.model_validate({
        "served_name": "m", "source": "m", "engine": {"chat_template": str(tmp_path / "nope.jinja")},
    })
    with pytest.raises(ConfigError, match=r"nope\.jinja not found"):
        VLLMEngine(config, str(tmp_path))._engine_args()


def test_tool_calling_without_auto_choice_still_names_the_parser() -> None:
    argv = ToolCallingConfig(parser="hermes", auto_tool_choice=False, exclude_tools_when_none=False).vllm_argv()
    assert argv == ["--tool-call-parser", "hermes", "--tool-strict-level", "parameter"]
