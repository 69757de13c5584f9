"""A persistent stream from each ingress replica to the in-cluster limiter, for the calls on the request path.

Without Redis, limits live in one actor per cluster (`deployments/ratelimit_actor.py`). A Ray actor call
costs the admission several times the limiter's own decision (argument pickling, the task's submission
and reply through both core workers, the hop onto the actor's event loop; figures in the README, "Why
the defaults"). This module carries the same four calls (admit, settle, extend, state) over one TCP
connection per ingress replica instead: length-prefixed JSON frames, many calls in flight matched by
id. The actor serves it on its own event loop, so a decision is as atomic as through a Ray call (the
limiter never awaits mid-decision).

Every connection starts with a mutual HMAC handshake over a secret handed out with the address through
Ray (`wire_protocol.py` says why and how); nothing is served before it. The server holds at most
`max_connections` connections (the excess is closed at once) and closes one that sent no frame for
`idle_timeout_s` (checked every quarter of it); the client pings every third of that while idle, so
the request path never pays a reconnection.

Failure semantics match the Ray path's: a call that cannot complete (connection lost, no answer within
the timeout) raises `WireDown`, a `RateLimitBackendError`, so the fail mode (open/closed) applies to
it. A request id admitted twice is the same `ConflictError` as in-process. The client never resends
a call that may have been applied.

Frames: 4-byte big-endian length, then UTF-8 JSON. Request `{"id", "op", "args"}`; answer `{"id",
"ok"}`, `{"id", "conflict", "param"}` or `{"id", "failed"}`. The server drops a connection that sends
a malformed or oversized frame; other connections are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from crosslogic.errors import ConflictError, CrossLogicError
from crosslogic.ratelimit.base import RateLimitBackendError
from crosslogic.ratelimit.memory import InMemoryRateLimiter
from crosslogic.ratelimit.models import Admission, AdmissionRequest, Settlement, Subject, SubjectState
from crosslogic.ratelimit.wire_protocol import (
    HANDSHAKE_TIMEOUT_S,
    MAX_FRAME_BYTES,
    HandshakeFailed,
    RefusalLog,
    StreamEndpoint,
    client_handshake,
    frame,
    new_secret,
    read_frame,
    server_handshake,
)
from crosslogic.supervisor import LoopRestarts, supervise

__all__ = ["MAX_FRAME_BYTES", "OPS", "StreamEndpoint", "WireClient", "WireDown", "WireServer"]

logger = logging.getLogger(__name__)

# "ping" keeps an idle connection under the server's idle timeout; it touches no state.
OPS = ("admit", "settle", "extend", "state", "ping")


class WireDown(RateLimitBackendError):
    """The stream to the limiter is gone, refused us, or did not answer in time."""


def encode(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def decode_result(op: str, raw: Any) -> Any:
    if op == "admit":
        return Admission.model_validate(raw)
    if op == "settle":
        return Settlement.model_validate(raw)
    if op in ("extend", "ping"):
        return bool(raw)
    return SubjectState.model_validate(raw)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    # Keyed by host, not port: a client retrying in a loop comes from a new port every time.
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


class WireServer:
    """Serves one `InMemoryRateLimiter` to authenticated connections, on the caller's event loop."""

    def __init__(
        self, limiter: InMemoryRateLimiter, *, secret: bytes | None = None, max_connections: int = 256,
        idle_timeout_s: float = 300.0, handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        on_refused: Callable[[str], None] | None = None,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._limiter = limiter
        self._restarts = restarts
        self._secret = secret or new_secret()
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._handshake_timeout_s = handshake_timeout_s
        self._on_refused = on_refused
        # connection -> when its last frame arrived (monotonic), for the idle reaper.
        self._connections: dict[asyncio.StreamWriter, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None
        self.refusals = RefusalLog()
        self.idle_closed = 0

    @property
    def endpoint(self) -> StreamEndpoint:
        """What a client needs to connect: the address and the secret (hand it over a trusted channel)."""
        if self.address is None:
            raise RuntimeError("the stream is not started")
        return StreamEndpoint(host=self.address[0], port=self.address[1], secret=self._secret)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str) -> tuple[str, int]:
        if self.address is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            sockname = self._server.sockets[0].getsockname()
            self.address = (str(sockname[0]), int(sockname[1]))
            self._reaper = asyncio.get_running_loop().create_task(supervise(
                "ratelimit_stream_reaper", self._reap_idle, restarts=self._restarts))
        return self.address

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _refuse(self, peer: str, reason: str, detail: str = "") -> None:
        self.refusals.refused(peer, reason, detail)
        if self._on_refused is not None:
            self._on_refused(reason)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        if len(self._connections) >= self._max_connections:
            self._refuse(peer, "too_many_connections", f"{self._max_connections} open")
            writer.close()
            return
        self._connections[writer] = time.monotonic()
        try:
            try:
                async with asyncio.timeout(self._handshake_timeout_s):
                    await server_handshake(reader, writer, self._secret, self._idle_timeout_s)
            except TimeoutError:
                self._refuse(peer, "handshake_timeout", f"no proof within {self._handshake_timeout_s}s")
                return
            except (HandshakeFailed, ValueError, asyncio.IncompleteReadError, ConnectionError) as exc:
                self._refuse(peer, "handshake_failed", repr(exc))
                return
            await self._serve_calls(reader, writer, peer)
        finally:
            self._connections.pop(writer, None)
            writer.close()

    async def _serve_calls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        connections = self._connections
        try:
            while True:
                try:
                    message = await read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # the client closed, or the reaper closed an idle connection
                # A timestamp per frame, not a timer: a deadline rescheduled per frame measurably
                # slowed admissions at 32 concurrent clients.
                connections[writer] = time.monotonic()
                writer.write(frame(self._answer(message)))
                await writer.drain()
        except (ValueError, ConnectionError) as exc:
            logger.warning("rate-limit stream: dropping a connection from %s: %r", peer, exc)

    async def _reap_idle(self) -> None:
        """Close connections without a frame for the idle timeout; runs every quarter of it, so one
        lives at most 1.25 times the timeout."""
        while True:
            await asyncio.sleep(self._idle_timeout_s / 4)
            cutoff = time.monotonic() - self._idle_timeout_s
            for writer, seen in list(self._connections.items()):
                if seen < cutoff and not writer.is_closing():
                    self.idle_closed += 1
                    logger.info("rate-limit stream: closing a connection from %s idle for %ss",
                                _peer(writer), self._idle_timeout_s)
                    writer.close()

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        call_id, op, args = message.get("id"), message.get("op"), message.get("args")
        if op not in OPS or not isinstance(args, list):
            raise ValueError(f"unknown call {op!r}")
        try:
            if op == "admit":
                result: Any = self._limiter.admit_now(AdmissionRequest.model_validate(args[0]))
            elif op == "settle":
                result = self._limiter.settle_now(Admission.model_validate(args[0]), int(args[1]))
            elif op == "extend":
                ttl = args[1] if len(args) > 1 else None
                admission = Admission.model_validate(args[0])
                result = self._limiter.extend_now(admission, None if ttl is None else float(ttl))
            elif op == "ping":
                result = True
            else:
                result = self._limiter.state_now(Subject.model_validate(args[0]))
        except ConflictError as exc:
            return {"id": call_id, "conflict": exc.message, "param": exc.param}
        except (CrossLogicError, ValueError, TypeError, IndexError) as exc:
            # A malformed call from a client of another version: that call fails, the stream lives.
            return {"id": call_id, "failed": f"{type(exc).__name__}: {exc}"}
        return {"id": call_id, "ok": encode(result)}


class WireClient:
    """One authenticated connection to a `WireServer`; safe for concurrent calls from one event loop."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout_s: float, idle_s: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False
        self._last_sent = time.monotonic()
        loop = asyncio.get_running_loop()
        self._receiver = loop.create_task(self._receive())
        self._keepalive = loop.create_task(self._keep_alive(idle_s / 3))

    @classmethod
    async def connect(cls, host: str, port: int, *, secret: bytes, timeout_s: float) -> WireClient:
        """Connect and run the handshake; `WireDown` unless the server proved it holds `secret`."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout_s)
        except (TimeoutError, OSError) as exc:
            raise WireDown(f"rate-limit stream: cannot connect to {host}:{port}: {exc!r}") from exc
        try:
            async with asyncio.timeout(timeout_s):
                idle_s = await client_handshake(reader, writer, secret)
        except HandshakeFailed as exc:
            writer.close()
            # Whatever listens there is not our limiter (e.g. it took the port after the actor died).
            logger.warning("rate-limit stream: refusing %s:%s: %s", host, port, exc)
            raise WireDown(f"rate-limit stream at {host}:{port} refused: {exc}") from exc
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            writer.close()
            raise WireDown(f"rate-limit stream at {host}:{port}: handshake did not complete "
                           f"(closed by the server: wrong secret or too many connections?): {exc!r}") from exc
        return cls(reader, writer, timeout_s=timeout_s, idle_s=idle_s)

    @property
    def connected(self) -> bool:
        return not self._closed

    async def call(self, op: str, *args: Any) -> Any:
        """One call's decoded result; `WireDown` when it may not have completed."""
        if self._closed:
            raise WireDown("rate-limit stream closed")
        call_id = next(self._ids)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        self._last_sent = time.monotonic()
        try:
            self._writer.write(frame({"id": call_id, "op": op, "args": [encode(a) for a in args]}))
            message = await asyncio.wait_for(answer, timeout=self._timeout_s)
        except TimeoutError as exc:
            raise WireDown(f"rate-limit stream: no answer to {op} within {self._timeout_s}s") from exc
        finally:
            self._pending.pop(call_id, None)
        if "ok" in message:
            return decode_result(op, message["ok"])
        if "conflict" in message:
            raise ConflictError(str(message["conflict"]), param=message.get("param"))
        raise WireDown(f"rate-limit stream: {op} failed in the limiter: {message.get('failed')}")

    async def _keep_alive(self, every_s: float) -> None:
        """Ping when no call went out for `every_s` (a third of the server's idle timeout), so a quiet
        replica keeps its connection instead of paying a reconnection on its next request."""
        while not self._closed:
            wait = self._last_sent + every_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self.call("ping")
            except WireDown as exc:  # unanswered: the connection is not to be trusted any more
                self._fail(exc)

    async def _receive(self) -> None:
        try:
            while True:
                message = await read_frame(self._reader)
                answer = self._pending.get(message.get("id"))  # type: ignore[arg-type]
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            self._fail(WireDown(f"rate-limit stream lost: {exc!r}"))
        except asyncio.CancelledError:
            self._fail(WireDown("rate-limit stream closed"))
            raise

    def _fail(self, error: WireDown) -> None:
        self._closed = True
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(error)
        self._writer.close()

    async def close(self) -> None:
        for task in (self._keepalive, self._receiver):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
