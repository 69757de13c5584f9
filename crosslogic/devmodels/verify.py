"""Checks that a folder is a Hugging Face checkpoint vLLM can serve.

`verify_checkpoint` reads only small JSON files, so it is cheap enough for every cache hit;
`verify_chat_tokenizer` loads the tokenizer and renders the chat template, and runs once per
conversion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crosslogic.devmodels.catalog import DevModel
from crosslogic.errors import ConfigError

TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"


class CheckpointInvalidError(ConfigError):
    """A checkpoint folder is incomplete or inconsistent; the message names what is wrong."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointInvalidError(f"{path.parent}: {path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointInvalidError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointInvalidError(f"{path}: expected a JSON object")
    return data


def _eos_ids(generation_config: dict[str, Any]) -> set[int]:
    raw = generation_config.get("eos_token_id")
    if isinstance(raw, int):
        return {raw}
    if isinstance(raw, list):
        return {i for i in raw if isinstance(i, int)}
    return set()


def _token_id(tokenizer_json: dict[str, Any], token: str) -> int | None:
    for added in tokenizer_json.get("added_tokens", []):
        if added.get("content") == token:
            return int(added["id"])
    vocab = tokenizer_json.get("model", {}).get("vocab", {})
    value = vocab.get(token) if isinstance(vocab, dict) else None
    return int(value) if isinstance(value, int) else None


def verify_checkpoint(path: Path, model: DevModel) -> None:
    """Raise CheckpointInvalidError unless `path` holds config, weights and tokenizer files
    (and, for chat models, a chat template and an EOS that ends the assistant turn)."""
    if not path.is_dir():
        raise CheckpointInvalidError(f"{path} is not a directory")
    config = _read_json(path / "config.json")
    if "model_type" not in config:
        raise CheckpointInvalidError(f"{path}/config.json has no model_type")
    if not any(path.glob("*.safetensors")):
        raise CheckpointInvalidError(f"{path}: no *.safetensors weights")
    tokenizer_config = _read_json(path / TOKENIZER_CONFIG)
    tokenizer_json = _read_json(path / "tokenizer.json")
    if model.task != "generate":
        return

    has_template = (path / CHAT_TEMPLATE_FILE).is_file() or bool(
        tokenizer_config.get("chat_template")
    )
    if not has_template:
        raise CheckpointInvalidError(f"{path}: no chat template ({CHAT_TEMPLATE_FILE})")
    if model.end_of_turn is None:
        return
    if tokenizer_config.get("eos_token") != model.end_of_turn:
        raise CheckpointInvalidError(
            f"{path}: tokenizer eos_token is {tokenizer_config.get('eos_token')!r}, "
            f"expected {model.end_of_turn!r}"
        )
    end_id = _token_id(tokenizer_json, model.end_of_turn)
    if end_id is None:
        raise CheckpointInvalidError(f"{path}: tokenizer has no {model.end_of_turn!r} token")
    if end_id not in _eos_ids(_read_json(path / GENERATION_CONFIG)):
        raise CheckpointInvalidError(
            f"{path}/{GENERATION_CONFIG}: eos_token_id does not include {model.end_of_turn!r} "
            f"(id {end_id}), generation would not stop at the end of a turn"
        )


def verify_chat_tokenizer(path: Path, model: DevModel) -> None:
    """Load the saved tokenizer the way vLLM will and check the chat prompt it renders."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(prompt, str) or "Hi" not in prompt:
        raise CheckpointInvalidError(f"{path}: chat template did not render the message")
    if model.end_of_turn is not None and tokenizer.eos_token != model.end_of_turn:
        raise CheckpointInvalidError(
            f"{path}: loaded tokenizer ends turns with {tokenizer.eos_token!r}, "
            f"expected {model.end_of_turn!r}"
        )
