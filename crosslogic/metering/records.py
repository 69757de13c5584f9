"""The usage record an ingress replica hands to the recorder when a request ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class UsageStatus(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


# A slotted dataclass rather than a pydantic model: it is built once per request on the hot path and
# only travels inside this process; the values come from our own code, validated in `__post_init__`.
@dataclass(slots=True, frozen=True)
class UsageRecord:
    # The server's id (crosslogic/api/request_ids.py): the ledger's key, never chosen by a client.
    request_id: str
    tenant_id: uuid.UUID
    model: str
    prompt_tokens: int
    completion_tokens: int
    status: UsageStatus
    key_id: uuid.UUID | None = None
    region: str | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    # The id the client sent (x-client-request-id / x-request-id): metadata, not unique.
    client_request_id: str | None = None
    # Set on a line of a batch (crosslogic/batches): its batch, and what its tokens are billed at
    # relative to interactive ones (the billing export multiplies, once per ledger row).
    batch_id: str | None = None
    price_multiplier: float = 1.0
    # When the request ended: decides the billing hour, so it is taken here, not at insert time.
    created_at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not self.request_id or len(self.request_id) > 200:
            raise ValueError("request_id must be 1..200 characters")
        if self.client_request_id is not None and not 1 <= len(self.client_request_id) <= 512:
            raise ValueError("client_request_id must be 1..512 characters")
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError("token counts must be >= 0")
        if self.prompt_tokens > 2**31 - 1 or self.completion_tokens > 2**31 - 1:
            raise ValueError("token counts must fit in int4")
        if not 0 < self.price_multiplier <= 1:
            raise ValueError("price_multiplier must be in (0, 1]")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
