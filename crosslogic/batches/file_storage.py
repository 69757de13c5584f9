"""Where file contents live: one interface, a local directory behind it by default.

Metadata (owner, size, purpose) is in PostgreSQL (crosslogic/batches/files.py); this stores bytes
only, under opaque keys, so an object store (S3, GCS) can take its place where a deployment outgrows
one machine: it needs put, get and delete by key and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Protocol

_KEY = re.compile(r"[A-Za-z0-9_.-]{1,200}\Z")


class FileStorage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """The content under `key`; FileNotFoundError if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; nothing happens if it is already gone."""
        ...


class LocalFileStorage:
    """A directory on this machine. Writes go to a temporary name and are renamed into place, so a
    reader never sees half a file and a crash leaves no partial content under a key."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or key.startswith("."):
            raise ValueError(f"invalid storage key {key!r}")
        return self._root / key

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(key), data)

    def _put(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._path(key).read_bytes)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)
