"""Works through batches: any number of runners (one per ingress replica) share them through
PostgreSQL, each claiming one batch at a time (crosslogic/batches/store.py).

A batch goes validating -> in_progress -> finalizing -> completed; a cancel turns it cancelling ->
cancelled, a window that runs out expired; an input file that cannot be read fails it, and so does
its key refused between lines (revoked, expired, its tenant suspended: `Credentials`), with the
refusal's code in `errors` and on every line not run. `failed`, not `cancelled`: nobody cancelled it,
and clients poll until any of completed / failed / expired / cancelled, reading `errors` on failed. Lines run
through a `LineExecutor` (the same gateway, engine and metering path as interactive requests), only
while `Capacity` says interactive traffic leaves room. A runner that dies leaves its claim to expire;
the next runner resumes from the lines still pending. A line that was running when its runner died
runs again, under the same request id: the usage ledger's key, so it is metered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.credentials import REFUSALS, refusal_code
from crosslogic.batches.engine_lines import UsageNotWritten
from crosslogic.batches.files import FileStore
from crosslogic.batches.lines import error_line, output_line, split_lines
from crosslogic.batches.store import Batch, BatchStore, Line
from crosslogic.errors import CrossLogicError

logger = logging.getLogger(__name__)

# How often a working runner renews its claim (and so notices a cancel), and how long it waits for
# room or a line's end before looking again. Claims last `claim_ttl_s` (30 s by default).
RENEW_EVERY_S = 1.0
IDLE_TICK_S = 0.1
# A credential check that takes longer says nothing; the batch goes on and asks again.
CREDENTIAL_CHECK_TIMEOUT_S = 2.0


class LineExecutor(Protocol):
    async def run(self, batch: Batch, line: Line) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of one line's request, as an interactive client would have got them."""
        ...


class Capacity(Protocol):
    def has_room(self, model: str | None = None) -> bool:
        """Whether a batch line (for `model`, when given) may start now without taking room
        interactive traffic needs."""
        ...


class AlwaysRoom:
    def has_room(self, model: str | None = None) -> bool:
        return True


class Credentials(Protocol):
    async def check(self, batch: Batch) -> None:
        """Raise the refusal a request with the batch's key would get now (crosslogic/batches/credentials.py)."""
        ...


class ClaimLost(Exception):
    """Another runner holds the batch now (this one's claim expired)."""


class BatchRunner:
    def __init__(
        self, batches: BatchStore, files: FileStore, executor: LineExecutor, config: BatchesConfig, *,
        capacity: Capacity | None = None, credentials: Credentials | None = None, runner_id: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._batches = batches
        self._files = files
        self._executor = executor
        self._config = config
        self._capacity = capacity or AlwaysRoom()
        self._credentials = credentials
        # The process id in it says which process holds a claim (an operator's, or a test's, question).
        self.runner_id = runner_id or f"runner-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._sleep = sleep
        self.lines_run = 0

    async def run_forever(self) -> None:
        while True:
            try:
                worked = await self.run_once()
            except Exception:
                logger.exception("batch runner %s: round failed", self.runner_id)
                worked = False
            if not worked:
                await self._sleep(self._config.poll_interval_s)

    async def run_once(self) -> bool:
        """Claim one batch and take it as far as it goes; False if there was none to claim."""
        batch = await self._batches.claim(self.runner_id, self._config.claim_ttl_s)
        if batch is None:
            return False
        try:
            await self._drive(batch)
        except ClaimLost:
            logger.warning("batch %s: claim lost to another runner", batch.id)
        finally:
            with contextlib.suppress(Exception):
                await self._batches.release(batch.id, self.runner_id)
        return True

    async def _renew(self, batch: Batch) -> Batch:
        renewed = await self._batches.renew(batch.id, self.runner_id, self._config.claim_ttl_s)
        if renewed is None:
            raise ClaimLost(batch.id)
        return renewed

    async def _move(self, batch: Batch, from_status: tuple[str, ...], to: Any, **fields: Any) -> Batch:
        moved = await self._batches.transition(batch.id, self.runner_id, from_status, to, **fields)
        # Not moved: the status changed under us (a cancel) or the claim is gone; read it again.
        return moved if moved is not None else await self._renew(batch)

    async def _drive(self, batch: Batch) -> None:
        for _ in range(8):  # each pass moves the batch on by at least one status
            if batch.status == "validating":
                batch = await self._validate(batch)
            elif batch.status == "in_progress":
                batch = await self._work(batch)
            elif batch.status in ("finalizing", "cancelling"):
                batch = await self._finalize(batch)
            else:
                return

    async def _validate(self, batch: Batch) -> Batch:
        try:
            data = await self._files.content(batch.tenant_id, batch.input_file_id)
        except Exception as exc:
            logger.warning("batch %s: input file unreadable: %r", batch.id, exc)
            errors = [{"code": "invalid_file", "message": f"Input file {batch.input_file_id} could not be read.",
                       "param": "input_file_id", "line": None}]
            return await self._move(batch, ("validating",), "failed", errors=errors)
        await self._batches.add_lines(batch.id, split_lines(batch.id, data, batch.endpoint))
        return await self._move(batch, ("validating",), "in_progress")

    async def _work(self, batch: Batch) -> Batch:
        limit = self._config.max_concurrent_lines
        running: set[asyncio.Task[None]] = set()
        renewed_at = -RENEW_EVERY_S
        try:
            while True:
                if time.monotonic() - renewed_at >= RENEW_EVERY_S:
                    # Holds the claim, and sees a cancel within RENEW_EVERY_S.
                    batch, renewed_at = await self._renew(batch), time.monotonic()
                    if batch.status != "in_progress":
                        return batch
                    if batch.expires_at <= datetime.now(UTC):
                        await self._wait(running)
                        await self._batches.fail_pending(
                            batch.id, "batch_expired", "This line was not executed because the batch expired.")
                        return await self._move(
                            batch, ("in_progress",), "expired", **await self._write_files(batch))
                # Only with a free slot and room left by interactive traffic is there anything to start.
                if len(running) < limit and self._capacity.has_room():
                    taken = {_line_no(task) for task in running}
                    lines = [line for line in await self._batches.pending(batch.id, limit * 2)
                             if line.line_no not in taken]
                    if not lines and not running:
                        return await self._move(batch, ("in_progress",), "finalizing")
                    # Before each group of lines: a revoked key or suspended tenant stops the batch.
                    refusal = await self._refusal(batch) if lines else None
                    if refusal is not None:
                        await self._wait(running)
                        return await self._stop(batch, refusal)
                    for line in lines[: limit - len(running)]:
                        if not self._capacity.has_room(_model(line)):
                            break
                        task = asyncio.create_task(self._run_line(batch, line), name=f"batch-line-{line.line_no}")
                        running.add(task)
                        task.add_done_callback(running.discard)
                # Until a line ends or a tick passes: then look for room, a cancel, and renew.
                if running:
                    await asyncio.wait(set(running), timeout=IDLE_TICK_S, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await self._sleep(IDLE_TICK_S)
        finally:
            for task in running:
                task.cancel()

    async def _refusal(self, batch: Batch) -> CrossLogicError | None:
        if self._credentials is None:
            return None
        try:
            await asyncio.wait_for(self._credentials.check(batch), CREDENTIAL_CHECK_TIMEOUT_S)
        except REFUSALS as exc:
            return exc
        except Exception as exc:  # says nothing about the credential: ask again before the next group
            logger.warning("batch %s: credential check failed: %r", batch.id, exc)
        return None

    async def _stop(self, batch: Batch, refusal: CrossLogicError) -> Batch:
        """The batch's key or tenant is refused: what has not run fails with the refusal (unrun, so
        unmetered), and the batch ends `failed` with it in `errors`; what ran stays in the output file."""
        code = refusal_code(refusal)
        logger.info("batch %s stopped: %s", batch.id, code)
        await self._batches.fail_pending(
            batch.id, code, f"{refusal.message} This line was not executed.")
        errors = [{"code": code, "message": refusal.message, "param": None, "line": None}]
        return await self._move(batch, ("in_progress",), "failed", errors=errors, **await self._write_files(batch))

    @staticmethod
    async def _wait(running: set[asyncio.Task[None]]) -> None:
        if running:
            await asyncio.wait(set(running))

    async def _run_line(self, batch: Batch, line: Line) -> None:
        assert line.body is not None
        try:
            status_code, body = await self._executor.run(batch, line)
            result = output_line(line.request_id, line.custom_id, status_code, body)
            ok = status_code < 400
        except UsageNotWritten as exc:
            # Pending still: it runs again under the same request id, metered once (the ledger's key).
            logger.warning("batch %s line %d: usage not written, to run again: %s", batch.id, line.line_no, exc)
            await self._sleep(IDLE_TICK_S)
            return
        except Exception as exc:
            logger.exception("batch %s line %d failed", batch.id, line.line_no)
            result = error_line(line.request_id, line.custom_id, "server_error", f"The request failed: {exc!r}"[:500])
            ok = False
        await self._batches.finish_line(batch.id, line.line_no, ok, result)
        self.lines_run += 1

    async def _finalize(self, batch: Batch) -> Batch:
        cancelling = batch.status == "cancelling"
        if cancelling:
            await self._batches.fail_pending(
                batch.id, "batch_cancelled", "This line was not executed because the batch was cancelled.")
        fields = await self._write_files(batch)
        return await self._move(batch, (batch.status,), "cancelled" if cancelling else "completed", **fields)

    async def _write_files(self, batch: Batch) -> dict[str, Any]:
        """The output and error files of what has run (a file only where there are lines for it)."""
        output, errors = await self._batches.results(batch.id)
        fields: dict[str, Any] = {}
        if output:
            fields["output_file_id"] = (await self._files.create(
                batch.tenant_id, f"{batch.id}_output.jsonl", "batch_output", _jsonl(output))).id
        if errors:
            fields["error_file_id"] = (await self._files.create(
                batch.tenant_id, f"{batch.id}_error.jsonl", "batch_output", _jsonl(errors))).id
        return fields


def _model(line: Line) -> str | None:
    model = line.body.get("model") if line.body is not None else None
    return model if isinstance(model, str) else None


def _line_no(task: asyncio.Task[None]) -> int:
    return int(task.get_name().rsplit("-", 1)[1])


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows)
