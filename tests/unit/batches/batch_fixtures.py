"""Shared by the Batch API unit tests: tenants, stores on the session database, and JSONL input."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg

from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.file_storage import LocalFileStorage
from crosslogic.batches.files import FileStore
from crosslogic.tenants.models import TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant


async def new_tenant(db: asyncpg.Pool) -> uuid.UUID:
    return (await create_tenant(db, TenantCreate(name=f"batches-{uuid.uuid4().hex[:8]}"))).id


def file_store(db: asyncpg.Pool, root: Path, config: BatchesConfig | None = None) -> FileStore:
    config = config or BatchesConfig()
    return FileStore(db, LocalFileStorage(root), max_bytes=config.max_file_bytes, max_lines=config.max_file_lines)


def chat_lines(n: int, *, model: str = "m", malformed_at: tuple[int, ...] = ()) -> bytes:
    """`n` chat requests as JSONL; the lines at `malformed_at` are cut in half (not JSON)."""
    out = []
    for i in range(n):
        line = json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": model, "messages": [{"role": "user", "content": f"say {i}"}],
                                    "max_tokens": 4}})
        out.append(line[: len(line) // 2] if i in malformed_at else line)
    return ("\n".join(out) + "\n").encode()
