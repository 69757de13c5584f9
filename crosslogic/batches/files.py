"""Uploaded and produced files (/v1/files): metadata in PostgreSQL (migration 0018), bytes in a
`FileStorage`. Every statement carries the tenant: another tenant's id is the same 404 as an unknown one.

Lines are not checked here beyond the limits: a malformed line fails that line of a batch into its
error file (as OpenAI does), not the upload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel

from crosslogic.batches.file_storage import FileStorage
from crosslogic.batches.ids import FILE_ID, new_file_id
from crosslogic.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor

Purpose = Literal["batch", "batch_output"]
STATEMENT_TIMEOUT_S = 5.0
_COLUMNS = "id, tenant_id, purpose, filename, bytes, line_count, storage_key, created_at"


class StoredFile(BaseModel):
    id: str
    tenant_id: UUID
    purpose: Purpose
    filename: str
    bytes: int
    line_count: int
    storage_key: str
    created_at: datetime

    def openai(self) -> dict[str, Any]:
        """The FileObject the official client reads."""
        return {
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at.timestamp()),
            "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
        }


def not_found(file_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"No such File object: {file_id[:100]}", param=param)


def count_lines(data: bytes) -> int:
    """Non-blank lines: what a batch will run."""
    return sum(1 for line in data.splitlines() if line.strip())


class FileStore:
    def __init__(self, db: Executor, storage: FileStorage, *, max_bytes: int, max_lines: int) -> None:
        self._db = db
        self._storage = storage
        self.max_bytes = max_bytes
        self.max_lines = max_lines

    async def create(self, tenant_id: UUID, filename: str, purpose: Purpose, data: bytes) -> StoredFile:
        if len(data) > self.max_bytes:
            raise PayloadTooLargeError(
                f"file is over the limit of {self.max_bytes} bytes", param="file", code="file_too_large")
        lines = count_lines(data)
        if purpose == "batch":
            if lines == 0:
                raise InvalidRequestError("file has no lines", param="file", code="empty_file")
            if lines > self.max_lines:
                raise InvalidRequestError(
                    f"file has {lines} lines; the limit is {self.max_lines}", param="file", code="too_many_lines")
        file_id = new_file_id()
        # Content first: a row never points at bytes that are not there (a crash leaves an orphan blob).
        await self._storage.put(file_id, data)
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"INSERT INTO batch_files ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) RETURNING {_COLUMNS}",
                file_id, tenant_id, purpose, filename[:500] or "file.jsonl", len(data), lines, file_id,
                timeout=STATEMENT_TIMEOUT_S,
            )
        assert row is not None
        return StoredFile.model_validate(dict(row))

    async def get(self, tenant_id: UUID, file_id: str, *, param: str | None = None) -> StoredFile:
        if not FILE_ID.match(file_id):
            raise not_found(file_id, param)
        with translate_db_errors():
            row = await self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM batch_files WHERE id = $1 AND tenant_id = $2", file_id, tenant_id,
                timeout=STATEMENT_TIMEOUT_S,
            )
        if row is None:
            raise not_found(file_id, param)
        return StoredFile.model_validate(dict(row))

    async def content(self, tenant_id: UUID, file_id: str) -> bytes:
        stored = await self.get(tenant_id, file_id)
        try:
            return await self._storage.get(stored.storage_key)
        except FileNotFoundError:
            raise not_found(file_id) from None

    async def page(
        self, tenant_id: UUID, *, purpose: str | None, limit: int, after: str | None,
    ) -> tuple[list[StoredFile], bool]:
        """Newest first (as OpenAI lists files); `after` is the last id of the previous page."""
        with translate_db_errors():
            rows = await self._db.fetch(
                f"""SELECT {_COLUMNS} FROM batch_files
                    WHERE tenant_id = $1 AND ($2::text IS NULL OR purpose = $2)
                      AND ($3::text IS NULL OR (created_at, id) < (
                          SELECT created_at, id FROM batch_files WHERE id = $3 AND tenant_id = $1))
                    ORDER BY created_at DESC, id DESC LIMIT $4""",
                tenant_id, purpose, after, limit + 1, timeout=STATEMENT_TIMEOUT_S,
            )
        files = [StoredFile.model_validate(dict(row)) for row in rows]
        return files[:limit], len(files) > limit

    async def delete(self, tenant_id: UUID, file_id: str) -> None:
        if not FILE_ID.match(file_id):
            raise not_found(file_id)
        with translate_db_errors():
            key = await self._db.fetchval(
                "DELETE FROM batch_files WHERE id = $1 AND tenant_id = $2 RETURNING storage_key",
                file_id, tenant_id, timeout=STATEMENT_TIMEOUT_S,
            )
        if key is None:
            raise not_found(file_id)
        await self._storage.delete(key)
