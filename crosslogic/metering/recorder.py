"""UsageRecorder: the hot path only appends to a bounded buffer; a background task batch-inserts.

Exactly-once comes from the ledger's primary key (the server-minted request id) and `ON CONFLICT DO NOTHING`: a batch
whose outcome is unknown (connection lost at commit) is simply inserted again. Rows leave the buffer
only after their batch committed, so a PostgreSQL outage costs latency of the ledger, not rows. The
buffer is bounded so an outage cannot exhaust memory; overflow drops the new record, which is counted
and raised as an alert, never silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import islice

import asyncpg

from crosslogic.metering.metrics import Metrics, alert
from crosslogic.metering.records import UsageRecord
from crosslogic.supervisor import LoopRestarts, supervise

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO usage_ledger (request_id, tenant_id, key_id, model, region, prompt_tokens,
                          completion_tokens, status, queue_ms, ttft_ms, total_ms, created_at,
                          client_request_id, batch_id, price_multiplier)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int[],
                     $7::int[], $8::text[], $9::float8[], $10::float8[], $11::float8[],
                     $12::timestamptz[], $13::text[], $14::text[], $15::numeric[])
ON CONFLICT (request_id) DO NOTHING
"""

# Errors that say "this data can never be inserted": retrying the batch would block the ledger forever.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


def _columns(batch: list[UsageRecord]) -> list[list[object]]:
    return [
        [r.request_id for r in batch],
        [r.tenant_id for r in batch],
        [r.key_id for r in batch],
        [r.model for r in batch],
        [r.region for r in batch],
        [r.prompt_tokens for r in batch],
        [r.completion_tokens for r in batch],
        [str(r.status) for r in batch],
        [r.queue_ms for r in batch],
        [r.ttft_ms for r in batch],
        [r.total_ms for r in batch],
        [r.created_at for r in batch],
        [r.client_request_id for r in batch],
        [r.batch_id for r in batch],
        [r.price_multiplier for r in batch],
    ]


class UsageRecorder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_buffer: int = 100_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.25,
        retry_base_s: float = 0.2,
        retry_max_s: float = 5.0,
        metrics: Metrics | None = None,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._pool = pool
        self._restarts = restarts
        self._failures = 0
        self._buffer: deque[UsageRecord] = deque()
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_overflow_alert = 0.0
        self.metrics = metrics or Metrics("crosslogic_usage_ledger")

    # --- hot path -------------------------------------------------------------------------------
    def record(self, record: UsageRecord) -> None:
        """Queue one usage row. Never awaits, never raises on a database problem."""
        if len(self._buffer) >= self._max_buffer:
            self.metrics.inc("dropped_total")
            now = time.monotonic()
            if now - self._last_overflow_alert > 10:
                self._last_overflow_alert = now
                alert(
                    "usage_ledger_overflow",
                    "usage buffer full (%d rows); dropped request %s (dropped so far: %d)",
                    self._max_buffer,
                    record.request_id,
                    int(self.metrics.get("dropped_total")),
                )
            return
        self._buffer.append(record)
        self.metrics.inc("enqueued_total")
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._buffer)

    def start(self) -> None:
        if self._task is None:
            # A failed flush escapes to the supervisor, which logs it, counts the restart and backs off;
            # the rows stay buffered. After the last flush on close, `_run` returns and it ends.
            self._task = asyncio.get_running_loop().create_task(supervise(
                "usage_flush", self._run, restarts=self._restarts, backoff_base_s=self._retry_base_s,
                backoff_max_s=self._retry_max_s, healthy_after_s=self._retry_max_s, finished_on_return=True,
            ), name="usage-recorder")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop the background task and flush what is buffered, retrying until `timeout_s`."""
        self._closing = True
        self._wake.set()
        if self._task is None and self._buffer:
            self.start()  # never started (e.g. start-up failed half-way): still write what we have
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
        if self._buffer:
            alert(
                "usage_ledger_unflushed",
                "shutting down with %d usage rows not written to the ledger",
                len(self._buffer),
            )

    async def _run(self) -> None:
        while True:
            if not self._buffer and self._closing:
                return
            small = len(self._buffer) < self._batch_size
            if not self._closing and self._failures == 0 and small:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
                except TimeoutError:
                    pass
            try:
                while self._buffer:
                    await self._flush_batch()
                self._failures = 0
            except Exception as exc:  # any failure: keep the rows; the supervisor backs off, retries
                self._failures += 1
                self.metrics.inc("flush_errors_total")
                if self._failures == 5:
                    alert("usage_ledger_write_failing", "ledger writes failing: %s (%d rows kept)",
                          exc, len(self._buffer))
                raise

    async def write(self, records: list[UsageRecord]) -> None:
        """Insert `records` now, past the buffer, for a caller that must know its rows are in the ledger
        before it goes on (a batch line, before its result is recorded); raises on a database error.
        The ledger's key makes a row written twice count once."""
        if records:
            async with self._pool.acquire() as conn:
                await conn.execute(_INSERT, *_columns(records))

    async def flush(self) -> None:
        """Write everything buffered now (tests, shutdown hooks); raises on a database error."""
        while self._buffer:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        batch = list(islice(self._buffer, 0, self._batch_size))
        started = time.monotonic()
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(_INSERT, *_columns(batch))
        except _DATA_ERRORS as exc:
            await self._insert_one_by_one(batch, exc)
        self.metrics.observe("flush_seconds", time.monotonic() - started)
        # Only this task removes rows, and only from the left: what we wrote is still the prefix.
        for _ in batch:
            self._buffer.popleft()
        self.metrics.inc("written_total", len(batch))
        self.metrics.set("buffered", len(self._buffer))

    async def _insert_one_by_one(self, batch: list[UsageRecord], cause: Exception) -> None:
        log.warning("usage batch rejected (%s); isolating the bad rows", cause)
        async with self._pool.acquire() as conn:
            for record in batch:
                try:
                    await conn.execute(_INSERT, *_columns([record]))
                except _DATA_ERRORS as exc:
                    self.metrics.inc("rejected_total")
                    alert(
                        "usage_ledger_rejected_row",
                        "ledger refused request %s: %s (%r)",
                        record.request_id,
                        exc,
                        record,
                    )
