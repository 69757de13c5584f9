"""Development model preparation: the real GGUF -> bf16 conversion (once per session), the cache,
verification and alias resolution. No network: both models come from installed PyPI packages."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from crosslogic.cli.main import main as cli_main
from crosslogic.devmodels import (
    DEV_MODELS,
    MARKER_FILE,
    CheckpointInvalidError,
    PreparedModel,
    model_statuses,
    prepare_dev_model,
    resolve_model_source,
    verify_checkpoint,
)
from crosslogic.devmodels.catalog import locate_source
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

SMOLLM = DEV_MODELS["smollm2-135m"]
MINILM = DEV_MODELS["all-minilm-l6-v2"]


class Interrupted(Exception):
    pass


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("crosslogic-home"))


@pytest.fixture(scope="session")
def converted(settings: Settings) -> tuple[PreparedModel, list[str]]:
    # A leftover from an "interrupted" earlier run must be cleaned up by the real one.
    stale = settings.models_dir / ".smollm2-135m.tmp-stale"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    lines: list[str] = []
    prepared = prepare_dev_model("smollm2-135m", settings, progress=lines.append)
    return prepared, lines


def _copy_small_files(source: Path, target: Path) -> Path:
    """A checkpoint copy that links the weights instead of copying 270 MB."""
    target.mkdir()
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            (target / item.name).symlink_to(item)
        else:
            shutil.copy2(item, target / item.name)
    return target


def test_conversion_writes_a_complete_bf16_checkpoint(converted, settings: Settings) -> None:
    prepared, lines = converted
    path = prepared.path
    assert prepared.cached is False
    assert path == settings.models_dir / "smollm2-135m"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", MARKER_FILE):
        assert (path / name).is_file(), name
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    # No half checkpoints or stale temp folders next to it.
    assert sorted(p.name for p in settings.models_dir.iterdir() if p.is_dir()) == ["smollm2-135m"]
    # A progress line per phase, with timings.
    assert any("dequantizing" in line and "done in" in line for line in lines)


def test_marker_records_the_source_file(converted) -> None:
    prepared, _ = converted
    marker = json.loads((prepared.path / MARKER_FILE).read_text())
    source = locate_source(SMOLLM)
    assert marker["source_size"] == source.stat().st_size
    assert marker["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_chat_template_and_eos_stop_at_im_end(converted) -> None:
    from transformers import AutoTokenizer

    prepared, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(str(prepared.path), local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    generation = json.loads((prepared.path / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert tokenizer.model_max_length == 8192


def test_second_prepare_is_a_fast_cache_hit(converted, settings: Settings) -> None:
    prepared, _ = converted
    weights_mtime = (prepared.path / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    again = prepare_dev_model("smollm2-135m", settings)
    assert time.perf_counter() - started < 1.0
    assert again.cached is True and again.path == prepared.path
    assert (prepared.path / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_changed_mtime_falls_back_to_the_hash(converted, settings: Settings) -> None:
    prepared, _ = converted
    marker_path = prepared.path / MARKER_FILE
    original = marker_path.read_text()
    try:
        marker = json.loads(original)
        marker["source_mtime_ns"] += 1
        marker_path.write_text(json.dumps(marker))
        # Same content, other mtime: the hash matches, still a cache hit.
        assert prepare_dev_model("smollm2-135m", settings).cached is True
        marker["source_sha256"] = "0" * 64
        marker_path.write_text(json.dumps(marker))
        status = {s.name: s for s in model_statuses(settings)}["smollm2-135m"]
        assert status.prepared is False and "sha256" in status.detail
    finally:
        marker_path.write_text(original)


def test_verification_catches_missing_or_wrong_files(converted, tmp_path: Path) -> None:
    prepared, _ = converted
    verify_checkpoint(prepared.path, SMOLLM)

    copy = _copy_small_files(prepared.path, tmp_path / "no-tokenizer")
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointInvalidError, match=r"tokenizer\.json is missing"):
        verify_checkpoint(copy, SMOLLM)

    copy = _copy_small_files(prepared.path, tmp_path / "no-template")
    (copy / "chat_template.jinja").unlink()
    with pytest.raises(CheckpointInvalidError, match="chat template"):
        verify_checkpoint(copy, SMOLLM)

    copy = _copy_small_files(prepared.path, tmp_path / "wrong-eos")
    generation = json.loads((copy / "generation_config.json").read_text())
    generation["eos_token_id"] = 0
    (copy / "generation_config.json").write_text(json.dumps(generation))
    with pytest.raises(CheckpointInvalidError, match="would not stop"):
        verify_checkpoint(copy, SMOLLM)


def test_damaged_cache_is_not_served(converted, settings: Settings, tmp_path: Path) -> None:
    prepared, _ = converted
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    _copy_small_files(prepared.path, home / "models" / "smollm2-135m")
    other = Settings(home=home)
    assert {s.name: s for s in model_statuses(other)}["smollm2-135m"].prepared is True
    (home / "models" / "smollm2-135m" / "tokenizer_config.json").unlink()
    status = {s.name: s for s in model_statuses(other)}["smollm2-135m"]
    assert status.prepared is False and "damaged" in status.detail


def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path) -> None:
    home_settings = Settings(home=tmp_path)

    def interrupt(line: str) -> None:
        # The first line from inside the converter: the staging folder exists by now.
        if "importing transformers" in line:
            raise Interrupted(line)

    with pytest.raises(Interrupted):
        prepare_dev_model("smollm2-135m", home_settings, progress=interrupt)
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if p.is_dir()]
    assert leftovers == []


def test_waiter_uses_the_checkpoint_another_process_finished(converted, tmp_path: Path) -> None:
    prepared, _ = converted
    waiting = Settings(home=tmp_path)
    lock_path = tmp_path / "models" / ".smollm2-135m.lock"
    lock_path.parent.mkdir(parents=True)
    result: list[PreparedModel] = []
    with lock_path.open("a") as handle:
        # Play the process that is converting: hold the lock, then publish a checkpoint.
        fcntl.flock(handle, fcntl.LOCK_EX)
        waiter = threading.Thread(
            target=lambda: result.append(prepare_dev_model("smollm2-135m", waiting))
        )
        waiter.start()
        time.sleep(0.3)
        assert not result, "prepare must wait for the lock holder"
        _copy_small_files(prepared.path, tmp_path / "models" / "smollm2-135m")
        fcntl.flock(handle, fcntl.LOCK_UN)
    waiter.join(timeout=30)
    assert result and result[0].cached is True


def test_embedding_model_is_served_in_place(settings: Settings) -> None:
    prepared = prepare_dev_model("all-minilm-l6-v2", settings)
    assert prepared.path == locate_source(MINILM)
    assert (prepared.path / "config.json").is_file()
    assert (prepared.path / "tokenizer.json").is_file()
    assert not (settings.models_dir / "all-minilm-l6-v2").exists()


def test_aliases_resolve_and_everything_else_passes_through(converted, settings) -> None:
    prepared, _ = converted
    assert resolve_model_source("smollm2-135m", settings) == str(prepared.path)
    assert resolve_model_source("crosslogic://smollm2-135m", settings) == str(prepared.path)
    assert resolve_model_source("all-minilm-l6-v2", settings) == str(locate_source(MINILM))
    for untouched in ("HuggingFaceTB/SmolLM2-135M-Instruct", "/models/llama", "./smollm2-135m"):
        assert resolve_model_source(untouched, settings) == untouched
    with pytest.raises(ConfigError, match="unknown development model"):
        resolve_model_source("crosslogic://no-such-model", settings)


def test_cli_prepare_and_list(converted, settings, monkeypatch, capsys) -> None:
    prepared, _ = converted
    monkeypatch.setenv("CROSSLOGIC_HOME", str(settings.home))
    assert cli_main(["models", "prepare", "smollm2-135m"]) == 0
    assert f"smollm2-135m: {prepared.path} (cached" in capsys.readouterr().out
    assert cli_main(["models", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(DEV_MODELS)
    assert listed["smollm2-135m"]["prepared"] is True
    assert listed["smollm2-135m"]["path"] == str(prepared.path)
    assert cli_main(["models", "prepare", "nope"]) == 1
    assert "unknown development model" in capsys.readouterr().err
