"""GGUF file -> bf16 Hugging Face checkpoint folder, with transformers.

transformers 5.x keeps GGUF weights packed by default (and refuses to save them);
`GgufConfig(dequantize=True)` unpacks them into a dense model that `save_pretrained` writes as
safetensors. The tokenizer is rebuilt from the GGUF metadata and saved beside the weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crosslogic.devmodels.catalog import DevModel
from crosslogic.errors import ConfigError

Progress = Callable[[str], None]


@contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the block. huggingface_hub reads it at import time, so callers that
    already imported it are covered by `local_files_only=True` on every load below."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@contextmanager
def _phase(progress: Progress, label: str) -> Iterator[None]:
    progress(f"{label} ...")
    started = time.perf_counter()
    yield
    progress(f"{label}: done in {time.perf_counter() - started:.1f}s")


def _fix_tokenizer(tokenizer: Any, model: DevModel, context_length: int | None) -> None:
    if not getattr(tokenizer, "chat_template", None) and model.fallback_chat_template:
        tokenizer.chat_template = model.fallback_chat_template
    if model.end_of_turn is not None and tokenizer.eos_token != model.end_of_turn:
        tokenizer.eos_token = model.end_of_turn
    if context_length:
        # The GGUF route leaves model_max_length at transformers' "unlimited" sentinel.
        tokenizer.model_max_length = context_length


def _fix_generation_config(hf_model: Any, tokenizer: Any, model: DevModel) -> None:
    if model.end_of_turn is None:
        return
    # Stop at the end of the assistant turn; also at <|endoftext|>-style EOS the config names,
    # so a model that skips <|im_end|> still stops.
    end_id = tokenizer.convert_tokens_to_ids(model.end_of_turn)
    ids = [end_id]
    config_eos = hf_model.config.eos_token_id
    for extra in config_eos if isinstance(config_eos, list) else [config_eos]:
        if isinstance(extra, int) and extra not in ids:
            ids.append(extra)
    hf_model.generation_config.eos_token_id = ids if len(ids) > 1 else end_id
    hf_model.generation_config.pad_token_id = tokenizer.pad_token_id or end_id
    hf_model.config.eos_token_id = end_id


def convert_gguf(source: Path, target: Path, model: DevModel, progress: Progress) -> None:
    """Write a bf16 checkpoint of the GGUF file `source` into the (empty) folder `target`."""
    with _hub_offline():
        with _phase(progress, "importing transformers"):
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
            except ImportError as exc:
                raise ConfigError(
                    f"converting {model.name} needs torch, transformers, gguf and accelerate "
                    f"(pip install -e '.[cpu]'): {exc}"
                ) from exc

        folder, filename = str(source.parent), source.name
        with _phase(progress, "building tokenizer from GGUF metadata"):
            tokenizer = AutoTokenizer.from_pretrained(
                folder, gguf_file=filename, local_files_only=True
            )
        with _phase(progress, "dequantizing GGUF weights to bf16 (slowest step)"):
            hf_model = AutoModelForCausalLM.from_pretrained(
                folder,
                gguf_file=filename,
                dtype=torch.bfloat16,
                quantization_config=GgufConfig(dequantize=True),
                local_files_only=True,
            )
        context_length = getattr(hf_model.config, "max_position_embeddings", None)
        _fix_tokenizer(tokenizer, model, context_length)
        _fix_generation_config(hf_model, tokenizer, model)
        # The GGUF display name is not a loadable path; keep the config honest.
        hf_model.config._name_or_path = model.name
        with _phase(progress, f"saving checkpoint to {target}"):
            hf_model.save_pretrained(str(target))
            tokenizer.save_pretrained(str(target))
        del hf_model
