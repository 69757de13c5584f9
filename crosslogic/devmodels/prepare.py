"""Prepare development models once, cache them under CROSSLOGIC_HOME, and resolve aliases.

A GGUF model is converted into `$CROSSLOGIC_HOME/models/<name>`. The conversion writes into a
temporary sibling folder and renames it into place only after verification, so an interrupted run
never leaves a half checkpoint behind. A marker file records which source file produced the
checkpoint; when it still matches, preparing again costs a few `stat` calls.

Engine replicas may prepare the same model at the same moment: an exclusive file lock per model
makes one of them convert while the others wait and then find the cache warm.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from crosslogic.devmodels.catalog import (
    DEV_MODELS,
    DevModel,
    SourceKind,
    dev_model_alias,
    get_dev_model,
    locate_source,
)
from crosslogic.devmodels.gguf_convert import convert_gguf
from crosslogic.devmodels.verify import (
    CheckpointInvalidError,
    verify_chat_tokenizer,
    verify_checkpoint,
)
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

logger = logging.getLogger(__name__)

MARKER_FILE = "crosslogic-prepared.json"
# Bump when the conversion output changes, so existing caches are rebuilt.
CONVERTER_VERSION = 1

Progress = Callable[[str], None]


class PreparedMarker(BaseModel):
    model: str
    converter_version: int
    source_path: str
    source_size: int
    source_mtime_ns: int
    source_sha256: str
    transformers_version: str
    prepared_at: datetime
    conversion_seconds: float


class PreparedModel(BaseModel):
    name: str
    path: Path
    # True when nothing was converted by this call.
    cached: bool
    seconds: float


class ModelStatus(BaseModel):
    name: str
    task: str
    description: str
    prepared: bool
    path: Path | None
    detail: str


def checkpoint_dir(model: DevModel, settings: Settings) -> Path:
    return settings.models_dir / model.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_marker(folder: Path) -> PreparedMarker | None:
    try:
        return PreparedMarker.model_validate_json((folder / MARKER_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def _cache_problem(model: DevModel, folder: Path, source: Path) -> str | None:
    """Why the cached checkpoint in `folder` cannot be used (None: it can)."""
    marker = _read_marker(folder)
    if marker is None:
        return "not prepared yet"
    if marker.model != model.name or marker.converter_version != CONVERTER_VERSION:
        return "prepared by another converter version"
    stat = source.stat()
    if marker.source_size != stat.st_size:
        return "source file changed (size)"
    # Same size and mtime: trust it without hashing, as git does; otherwise the hash decides.
    if marker.source_mtime_ns != stat.st_mtime_ns and marker.source_sha256 != _sha256(source):
        return "source file changed (sha256)"
    try:
        verify_checkpoint(folder, model)
    except CheckpointInvalidError as exc:
        return f"checkpoint damaged: {exc}"
    return None


@contextmanager
def _model_lock(models_dir: Path, name: str) -> Iterator[None]:
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(models_dir: Path, name: str) -> None:
    # Only called under the model's lock, so these belong to interrupted runs, not live ones.
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for stale in models_dir.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(staged: Path, target: Path) -> None:
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staged.rename(target)


def _convert(model: DevModel, source: Path, target: Path, progress: Progress) -> float:
    started = time.perf_counter()
    progress(f"hashing {source.name} ({source.stat().st_size / 1e6:.0f} MB)")
    stat = source.stat()
    sha256 = _sha256(source)
    staged = Path(tempfile.mkdtemp(prefix=f".{model.name}.tmp-", dir=target.parent))
    try:
        convert_gguf(source, staged, model, progress)
        progress("verifying checkpoint (config, weights, tokenizer, chat template, EOS)")
        verify_checkpoint(staged, model)
        verify_chat_tokenizer(staged, model)
        import transformers

        seconds = time.perf_counter() - started
        marker = PreparedMarker(
            model=model.name,
            converter_version=CONVERTER_VERSION,
            source_path=str(source),
            source_size=stat.st_size,
            source_mtime_ns=stat.st_mtime_ns,
            source_sha256=sha256,
            transformers_version=transformers.__version__,
            prepared_at=datetime.now(UTC),
            conversion_seconds=round(seconds, 2),
        )
        (staged / MARKER_FILE).write_text(marker.model_dump_json(indent=2) + "\n")
        # mkdtemp and safetensors create owner-only files; a model folder is not a secret.
        staged.chmod(0o755)
        for item in staged.iterdir():
            item.chmod(0o644)
        _swap_into_place(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return seconds


def prepare_dev_model(
    name: str,
    settings: Settings,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> PreparedModel:
    """Make the dev model `name` servable and return its local checkpoint folder.

    Blocking (a conversion takes tens of seconds): from async code call it through
    `asyncio.to_thread`. Raises `ConfigError` when the source package is missing.
    """
    report = progress or logger.info
    started = time.perf_counter()
    model = get_dev_model(name)
    source = locate_source(model)
    if model.kind is SourceKind.HF_DIR:
        verify_checkpoint(source, model)
        return PreparedModel(
            name=name, path=source, cached=True, seconds=time.perf_counter() - started
        )

    target = checkpoint_dir(model, settings)
    problem = None if force else _cache_problem(model, target, source)
    if not force and problem is None:
        return PreparedModel(
            name=name, path=target, cached=True, seconds=time.perf_counter() - started
        )
    with _model_lock(settings.models_dir, name):
        # Another process may have finished the conversion while we waited for the lock.
        problem = "forced" if force else _cache_problem(model, target, source)
        if problem is None:
            return PreparedModel(
                name=name, path=target, cached=True, seconds=time.perf_counter() - started
            )
        _remove_leftovers(settings.models_dir, name)
        report(f"converting {source} -> {target} ({problem})")
        seconds = _convert(model, source, target, report)
    report(f"prepared {target} in {seconds:.1f}s")
    return PreparedModel(name=name, path=target, cached=False, seconds=seconds)


def resolve_model_source(
    source: str, settings: Settings, *, progress: Progress | None = None
) -> str:
    """Map a dev-model alias (`smollm2-135m` or `crosslogic://smollm2-135m`) to its prepared local
    folder, preparing it if needed; return anything else (an HF id, a path) unchanged."""
    alias = dev_model_alias(source)
    if alias is None:
        return source
    return str(prepare_dev_model(alias, settings, progress=progress).path)


def model_statuses(settings: Settings) -> list[ModelStatus]:
    """What `crosslogic models list` shows: every known dev model, prepared or not, never
    converting anything."""
    statuses = []
    for model in DEV_MODELS.values():
        prepared, path, detail = False, None, ""
        try:
            source = locate_source(model)
            if model.kind is SourceKind.HF_DIR:
                verify_checkpoint(source, model)
                prepared, path, detail = True, source, "served in place from its package"
            else:
                path = checkpoint_dir(model, settings)
                problem = _cache_problem(model, path, source)
                prepared, detail = problem is None, problem or "ready"
        except (ConfigError, OSError) as exc:
            # A missing package or a damaged checkpoint is shown, and the listing goes on.
            detail = str(exc)
        statuses.append(
            ModelStatus(
                name=model.name,
                task=model.task,
                description=model.description,
                prepared=prepared,
                path=path,
                detail=detail,
            )
        )
    return statuses

