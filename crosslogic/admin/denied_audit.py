"""Refused admin credentials, aggregated: a few audit rows per source and reason, not one per request.

Before, every bad admin token wrote an audit row and a WARNING line, so anyone could grow the audit
table (append-only: it can never be trimmed by the application) and the logs without bound. Now,
per (source, reason) and window (default 60 s):
- the first refusal writes its row (as before) and one WARNING line, at once;
- the repeats within the window are counted in memory and, once the window closes, written as ONE
  row with `attempts` = their number and `first_at` / `last_at`, plus one WARNING summary line.
So 1,000 bad tokens from one source in a minute cost two rows. The source is the throttling key
(`crosslogic.auth.client_address`), not a client-chosen X-Forwarded-For, so rotating that header
cannot open new windows; and past `max_sources_per_window` new sources in a window, further
sources share the catch-all source "*", which bounds rows (and memory) even against many addresses.
State is per replica: N replicas write at most N times as many rows, still bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from crosslogic.admin.jwt_auth import log_auth_failure
from crosslogic.audit.log import AuditContext, record_denied
from crosslogic.supervisor import supervise

log = logging.getLogger("crosslogic.admin.auth")

CATCH_ALL_SOURCE = "*"


@dataclass
class _Window:
    opened: float  # monotonic
    ctx: AuditContext  # the first refusal's: actor, request id, source
    action: str
    target_id: str | None
    repeats: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None


class DeniedAttempts:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        window_s: float = 60.0,
        max_sources_per_window: int = 100,
        write_rows: bool = True,
        # Other refused credentials reuse this (regional agents' heartbeats: "region", "region_auth_failed").
        target_type: str = "admin_api",
        event: str = "admin_auth_failed",
    ) -> None:
        self._pool = pool
        self._target_type = target_type
        self._event = event
        self._window_s = window_s
        self._max_sources = max_sources_per_window
        self._write_rows = write_rows
        self._windows: dict[tuple[str, str], _Window] = {}
        self._sources_opened = 0
        self._sources_since = time.monotonic()
        self._flusher: asyncio.Task[None] | None = None

    async def record(
        self, ctx: AuditContext, *, source: str, action: str, target_id: str | None, reason: str
    ) -> None:
        now = time.monotonic()
        window = self._windows.get((source, reason))
        if window is not None and now - window.opened < self._window_s:
            window.repeats += 1
            window.last_at = datetime.now(UTC)
            window.first_at = window.first_at or window.last_at
            return
        if window is not None:
            await self._close(source, reason, self._windows.pop((source, reason)))
        if source != CATCH_ALL_SOURCE and not self._may_open_source(now):
            await self.record(ctx, source=CATCH_ALL_SOURCE, action=action, target_id=target_id, reason=reason)
            return
        ctx = ctx.model_copy(update={"client_addr": source})
        self._windows[(source, reason)] = _Window(now, ctx, action, target_id)
        self._ensure_flusher()
        log_auth_failure(
            reason,
            event=self._event,
            actor=ctx.actor,
            action=action,
            request_id=ctx.request_id,
            client_addr=source,
            repeats_summarised_after_s=self._window_s,
        )
        if self._write_rows:
            await record_denied(
                self._pool, ctx, action=action, target_id=target_id, reason=reason, target_type=self._target_type
            )

    async def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of closed windows (all windows with `everything`, e.g. on shutdown)."""
        now = time.monotonic()
        for (source, reason), window in list(self._windows.items()):
            if everything or now - window.opened >= self._window_s:
                del self._windows[(source, reason)]
                await self._close(source, reason, window)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        await self.flush(everything=True)

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    def _may_open_source(self, now: float) -> bool:
        if now - self._sources_since >= self._window_s:
            self._sources_opened, self._sources_since = 0, now
        self._sources_opened += 1
        return self._sources_opened <= self._max_sources

    async def _close(self, source: str, reason: str, window: _Window) -> None:
        if window.repeats == 0:
            return
        log.warning(
            json.dumps(
                {
                    "event": f"{self._event}_repeated",
                    "reason": reason,
                    "client_addr": source,
                    "attempts": window.repeats,
                    "first_at": window.first_at,
                    "last_at": window.last_at,
                },
                default=str,
            )
        )
        if self._write_rows:
            await record_denied(
                self._pool,
                window.ctx.model_copy(update={"request_id": None}),
                action=window.action,
                target_id=window.target_id,
                reason=reason,
                attempts=window.repeats,
                first_at=window.first_at,
                last_at=window.last_at,
                target_type=self._target_type,
            )

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(supervise(
                "denied_audit_flush", self._flush_until_idle, finished_on_return=True,
            ), name="crosslogic-denied-audit-flush")

    async def _flush_until_idle(self) -> None:
        # Not a forever loop: it ends when no window is open and the next refusal starts it again.
        while self._windows:
            oldest = min(window.opened for window in self._windows.values())
            await asyncio.sleep(max(0.0, oldest + self._window_s - time.monotonic()))
            try:
                await self.flush()
            except Exception:  # record_denied is best effort already; anything else: log, go on
                log.exception("writing denied-admin audit summaries failed")
