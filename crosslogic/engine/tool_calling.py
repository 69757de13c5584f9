"""Function calling for one model: which vLLM tool-call parser reads its output, and how far vLLM's
guided decoding constrains the calls. The `engine.tool_calling` section of a model's config.

A model without it still takes `tools` with tool_choice "none"; "auto", "required" and named
choices are then refused by vLLM (400), since nothing would read the calls back out of the text.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ToolCallingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # vLLM's parser for this model's call format (`vllm serve --tool-call-parser`): hermes reads
    # <tool_call>{"name": ..., "arguments": ...}</tool_call>, the format the model's chat template
    # must teach it (crosslogic/engine/chat_templates/smollm2_tools.jinja for SmolLM2).
    parser: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    # tool_choice "auto": the model decides whether to call, the parser finds its calls. Off, only
    # "none", "required" and named choices are served.
    auto_tool_choice: bool = True
    # How far vLLM's grammar (structured outputs) holds the model to the tools (--tool-strict-level):
    # "parameter" pins every call's arguments to its tool's JSON schema (required / named always, and
    # an auto call once the model opens one), so even a small model's calls parse and validate;
    # "function" constrains only the call envelope; "auto" only tools sent with `strict: true`.
    strict_level: Literal["auto", "function", "parameter"] = "parameter"
    # tool_choice "none": leave the tools out of the prompt, so a model that may not call them is not
    # shown them (a small model shown tools writes call markup as text).
    exclude_tools_when_none: bool = True

    def vllm_argv(self) -> list[str]:
        """The vLLM server arguments for these settings."""
        argv = ["--tool-call-parser", self.parser, "--tool-strict-level", self.strict_level]
        if self.auto_tool_choice:
            argv.append("--enable-auto-tool-choice")
        if self.exclude_tools_when_none:
            argv.append("--exclude-tools-when-tool-choice-none")
        return argv
