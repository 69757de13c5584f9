"""Batch API settings (the `batches` section of the app config)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class BatchesConfig(BaseModel):
    enabled: bool = True
    # Where uploaded and produced files live; None: $CROSSLOGIC_HOME/files.
    files_dir: Path | None = None
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_file_lines: int = Field(default=50_000, ge=1)
    # Lines of one runner in flight at once: the ceiling batch work may take on the engines.
    max_concurrent_lines: int = Field(default=4, ge=1)
    # Interactive requests in flight on this replica at or above which no new batch line starts.
    interactive_busy_threshold: int = Field(default=4, ge=1)
    # Nor while an engine of the line's model has a request waiting, or runs more than this fraction
    # of its batch capacity (max_num_seqs; `default_engine_batch_capacity` where the config has none).
    engine_busy_fraction: float = Field(default=0.5, gt=0, le=1)
    default_engine_batch_capacity: int = Field(default=256, ge=1)
    # A runner renews its claim on a batch this often; an unrenewed claim expires after `claim_ttl_s`.
    claim_ttl_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    # What a batch line costs relative to the same interactive request (OpenAI: half).
    price_multiplier: float = Field(default=0.5, gt=0, le=1)
