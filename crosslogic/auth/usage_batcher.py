"""Batched `api_keys.last_used_at`: one dict write per request, one UPDATE per flush interval.

Per-request writes would put PostgreSQL on the hot path and turn every key into a hot row; the
column is informational, so a few seconds of delay (and, on a crash, losing the last interval) is fine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from uuid import UUID

from crosslogic.storage.executor import Executor
from crosslogic.supervisor import LoopRestarts, supervise
from crosslogic.tenants.api_key_repository import record_key_usage

log = logging.getLogger(__name__)


class KeyUsageBatcher:
    def __init__(
        self, db: Executor, *, flush_interval_s: float = 5.0, restarts: LoopRestarts | None = None
    ) -> None:
        self._db = db
        self._restarts = restarts
        self._flush_interval_s = flush_interval_s
        self._pending: dict[UUID, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.rows_written = 0

    def touch(self, key_id: UUID, at: float | None = None) -> None:
        """Hot path: remember the latest use (wall-clock seconds)."""
        self._pending[key_id] = time.time() if at is None else at

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(
                supervise("key_usage_flush", self._run, restarts=self._restarts,
                          backoff_base_s=self._flush_interval_s, backoff_max_s=60.0),
                name="crosslogic-key-usage-flush")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()

    async def flush(self) -> int:
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            written = await record_key_usage(
                self._db,
                {k: datetime.fromtimestamp(t, UTC) for k, t in batch.items()},
            )
        except Exception:
            # Keep the batch for the next attempt; newer touches win over the ones we put back.
            for key_id, at in batch.items():
                self._pending[key_id] = max(at, self._pending.get(key_id, at))
            raise
        self.flushes += 1
        self.rows_written += written
        return written

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush()
            except Exception:
                # A database outage must not kill the loop: log and try again next interval.
                log.warning("flushing API-key last_used_at failed; will retry", exc_info=True)
