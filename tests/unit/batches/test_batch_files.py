"""Files of the Batch API on PostgreSQL and a local directory: round trip, limits, listing, deletion,
and tenant isolation (another tenant's id is a 404, never a 403)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.file_storage import LocalFileStorage
from crosslogic.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from tests.unit.batches.batch_fixtures import chat_lines, file_store, new_tenant


async def test_local_storage_round_trip_and_delete(tmp_path: Path) -> None:
    storage = LocalFileStorage(tmp_path / "files")
    await storage.put("file-abc", b"one\ntwo\n")
    assert await storage.get("file-abc") == b"one\ntwo\n"
    assert [p.name for p in (tmp_path / "files").iterdir()] == ["file-abc"]  # no partial left behind
    await storage.delete("file-abc")
    await storage.delete("file-abc")  # already gone: nothing happens
    with pytest.raises(FileNotFoundError):
        await storage.get("file-abc")
    for bad in ("../etc", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            await storage.put(bad, b"x")


async def test_upload_retrieve_content_list_delete(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    files = file_store(db_pool, tmp_path)
    tenant = await new_tenant(db_pool)
    data = chat_lines(3)
    first = await files.create(tenant, "in.jsonl", "batch", data)
    second = await files.create(tenant, "in2.jsonl", "batch", data)
    assert (first.bytes, first.line_count, first.purpose, first.filename) == (len(data), 3, "batch", "in.jsonl")
    assert first.openai()["object"] == "file" and first.openai()["status"] == "processed"
    assert (await files.get(tenant, first.id)).id == first.id
    assert await files.content(tenant, first.id) == data
    page, more = await files.page(tenant, purpose="batch", limit=1, after=None)
    assert [f.id for f in page] == [second.id] and more  # newest first
    page, more = await files.page(tenant, purpose="batch", limit=1, after=second.id)
    assert [f.id for f in page] == [first.id] and not more
    assert (await files.page(tenant, purpose="batch_output", limit=10, after=None))[0] == []
    await files.delete(tenant, first.id)
    with pytest.raises(NotFoundError):
        await files.get(tenant, first.id)
    with pytest.raises(NotFoundError):
        await files.content(tenant, first.id)
    assert not (tmp_path / first.id).exists()


async def test_another_tenants_file_is_not_found(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    files = file_store(db_pool, tmp_path)
    owner, other = await new_tenant(db_pool), await new_tenant(db_pool)
    stored = await files.create(owner, "in.jsonl", "batch", chat_lines(1))
    for call in (files.get(other, stored.id), files.content(other, stored.id), files.delete(other, stored.id)):
        with pytest.raises(NotFoundError) as caught:
            await call
        assert caught.value.status_code == 404
    assert (await files.page(other, purpose=None, limit=10, after=None))[0] == []
    assert await files.content(owner, stored.id) == chat_lines(1)  # untouched by the other's delete
    with pytest.raises(NotFoundError):
        await files.get(owner, "file-not-an-id")


async def test_limits(db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    files = file_store(db_pool, tmp_path, BatchesConfig(max_file_bytes=2000, max_file_lines=5))
    tenant = await new_tenant(db_pool)
    with pytest.raises(InvalidRequestError, match="lines"):
        await files.create(tenant, "in.jsonl", "batch", chat_lines(6))
    with pytest.raises(PayloadTooLargeError, match="2000 bytes"):
        await files.create(tenant, "in.jsonl", "batch", b"x" * 2001)
    with pytest.raises(InvalidRequestError, match="no lines"):
        await files.create(tenant, "in.jsonl", "batch", b"\n \n")
    # A malformed line is the batch's business (its error file), not the upload's.
    assert (await files.create(tenant, "in.jsonl", "batch", chat_lines(5, malformed_at=(2,)))).line_count == 5
