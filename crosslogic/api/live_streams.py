"""Streams in progress end when their credential stops being valid: a revoked or expired key, a
suspended tenant (by an operator or by billing), a key whose scopes no longer cover the model.

A stream is authenticated once, at its start; without this a client whose key was revoked (leaked,
abused, unpaid) keeps a long generation going for as long as it likes. Each ingress process keeps the
streams it relays in a `LiveStreams` registry. While any stream runs, one task re-checks every
stream's credential every `interval_s` through the same authenticator the requests use: a dict lookup
while the key's cache entry is fresh, and one query after a change (PostgreSQL NOTIFY drops the
entry the moment a revocation or suspension commits; while the listener is down entries last 1 s).
So a stream ends within `interval_s` plus one lookup of the change, under a second.

How a stream is ended: the stream's own task is cancelled while it waits for the engine's next event
(never while it writes to the client, so no half-written event). The cancellation closes the engine
stream (Serve cancels the call and vLLM aborts the request), the relay's `finally` settles the
request as it does for any early end (the lease released, the ledger row written with the engine's
running token counts: what was served is metered), and the client gets an OpenAI error event, which
the `openai` client raises as an `APIError`.

Nothing runs while no stream is live: the watcher task exits with the last stream and starts again
with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from crosslogic.errors import (
    AuthenticationError,
    CrossLogicError,
    InsufficientQuotaError,
    PermissionDeniedError,
)
from crosslogic.supervisor import supervise

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[object]]
# One piece of a response body, as Starlette types StreamingResponse content.
Chunk = str | bytes | memoryview

# What ends a stream: the answers a new request with this credential would get. Anything else (the
# database unreachable, a timeout) says nothing about the credential, so the stream goes on.
_ENDING = (AuthenticationError, PermissionDeniedError, InsufficientQuotaError)


class _Guard:
    __slots__ = ("check", "ended_by", "subject", "task", "waiting")

    def __init__(self, subject: str, check: Check, task: asyncio.Task[object]) -> None:
        self.subject = subject
        self.check = check
        self.task = task
        self.waiting = False
        self.ended_by: CrossLogicError | None = None


class LiveStreams:
    def __init__(self, *, interval_s: float = 0.5, check_timeout_s: float = 2.0) -> None:
        self._interval_s = interval_s
        self._check_timeout_s = check_timeout_s
        self._guards: set[_Guard] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.ended = 0  # streams ended because their credential went bad (for tests and metrics)

    def __len__(self) -> int:
        return len(self._guards)

    async def guard(self, stream: AsyncIterable[Chunk], *, subject: str, check: Check) -> AsyncIterator[Chunk]:
        """Relay `stream`, ending it with an error event if `check` starts raising one of the ending
        errors. `subject` groups streams of one credential (one check per subject per round)."""
        task = asyncio.current_task()
        assert task is not None
        chunks = aiter(stream)
        guard = _Guard(subject, check, task)
        self._guards.add(guard)
        self._ensure_watcher()
        try:
            while guard.ended_by is None:  # else ended while a chunk was going to the client
                guard.waiting = True
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if guard.ended_by is None:
                        raise  # the client went away, or the server is stopping
                    # Ours: the engine call is closed and the request settled (the relay's finally).
                    task.uncancel()
                    break
                finally:
                    guard.waiting = False
                yield chunk
            # Closing `stream` below closes the engine call and settles, as for any early end.
            assert guard.ended_by is not None
            yield f"data: {json.dumps(guard.ended_by.body())}\n\n"
        finally:
            self._guards.discard(guard)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            # Ends by itself when no stream is left; anything escaping a round is the supervisor's.
            self._watcher = asyncio.get_running_loop().create_task(supervise(
                "live_streams_watch", self._watch, backoff_base_s=self._interval_s, finished_on_return=True,
            ), name="live-streams-watcher")

    async def _watch(self) -> None:
        while self._guards:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_once()
            except Exception:  # never let one bad round stop the watching
                logger.exception("checking the credentials of live streams failed")

    async def check_once(self) -> int:
        """Check every live stream's credential once; end those refused. Returns how many ended."""
        by_subject: dict[str, list[_Guard]] = {}
        for guard in self._guards:
            if guard.ended_by is None:
                by_subject.setdefault(guard.subject, []).append(guard)
        if not by_subject:
            return 0
        verdicts = await asyncio.gather(*(self._verdict(guards[0].check) for guards in by_subject.values()))
        ended = 0
        for guards, verdict in zip(by_subject.values(), verdicts, strict=True):
            if verdict is None:
                continue
            for guard in guards:
                ended += self._end(guard, verdict)
        return ended

    async def _verdict(self, check: Check) -> CrossLogicError | None:
        try:
            await asyncio.wait_for(check(), timeout=self._check_timeout_s)
        except _ENDING as exc:
            return exc
        except Exception:
            return None  # cannot tell now; the next round asks again
        return None

    def _end(self, guard: _Guard, error: CrossLogicError) -> int:
        if guard.ended_by is not None:
            return 0
        guard.ended_by = error
        self.ended += 1
        logger.info("ending a live stream of %s: %s", guard.subject, error.code)
        # Waiting for the engine: interrupted now. Else it is handing a chunk to the client and
        # sees `ended_by` when it comes back for the next one (never cut mid-write).
        if guard.waiting:
            guard.task.cancel()
        return 1
