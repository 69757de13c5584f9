"""Ids of the Batch API, OpenAI-shaped: `file-<32 hex>`, `batch_<32 hex>`."""

from __future__ import annotations

import re
import uuid

FILE_ID = re.compile(r"file-[0-9a-f]{32}\Z")
BATCH_ID = re.compile(r"batch_[0-9a-f]{32}\Z")


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def line_request_id(batch_id: str, line_no: int) -> str:
    """The server request id of one line: the same on every run of it, so the usage ledger's primary
    key meters it once however often a resumed batch runs it."""
    digest = uuid.uuid5(uuid.NAMESPACE_URL, f"crosslogic:{batch_id}:{line_no}").hex
    return f"req_{digest}"
