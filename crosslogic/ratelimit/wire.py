"""A persistent stream from each ingress replica to the in-cluster limiter, for the calls on the request path.

Without Redis, limits live in one actor per cluster (`deployments/ratelimit_actor.py`). A Ray actor call
costs the admission about 2.2 ms p50 on 2 cores (argument pickling, the task's submission and reply
through both core workers, the hop onto the actor's event loop), against about 0.2 ms for the limiter's
own decision. This module carries the same four calls (admit, settle, extend, state) over one TCP
connection per ingress replica instead: length-prefixed JSON frames, many calls in flight matched by
id. The actor serves it on its own event loop, so a decision is as atomic as through a Ray call (the
limiter never awaits mid-decision).

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
import json
import logging
import struct
from typing import Any

from pydantic import BaseModel

from crosslogic.errors import ConflictError, CrossLogicError
from crosslogic.ratelimit.base import RateLimitBackendError
from crosslogic.ratelimit.memory import InMemoryRateLimiter
from crosslogic.ratelimit.models import Admission, AdmissionRequest, Settlement, Subject, SubjectState

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
# An admission with a long key prefix and model name is under 2 KiB; a state answer too.
MAX_FRAME_BYTES = 1 << 20
OPS = ("admit", "settle", "extend", "state")


class WireDown(RateLimitBackendError):
    """The stream to the limiter is gone or did not answer in time."""


def _frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes")
    message = json.loads(await reader.readexactly(length))
    if not isinstance(message, dict):
        raise ValueError("frame is not an object")
    return message


def encode(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def decode_result(op: str, raw: Any) -> Any:
    if op == "admit":
        return Admission.model_validate(raw)
    if op == "settle":
        return Settlement.model_validate(raw)
    if op == "extend":
        return bool(raw)
    return SubjectState.model_validate(raw)


class WireServer:
    """Serves one `InMemoryRateLimiter` to any number of connections, on the caller's event loop."""

    def __init__(self, limiter: InMemoryRateLimiter) -> None:
        self._limiter = limiter
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str) -> tuple[str, int]:
        if self.address is None:
            self._server = await asyncio.start_server(self._serve, host, 0)
            sockname = self._server.sockets[0].getsockname()
            self.address = (str(sockname[0]), int(sockname[1]))
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    message = await _read_frame(reader)
                except asyncio.IncompleteReadError:
                    return  # the client closed
                writer.write(_frame(self._answer(message)))
                await writer.drain()
        except (ValueError, ConnectionError) as exc:
            logger.warning("rate-limit stream: dropping a connection: %r", exc)
        finally:
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
                result = self._limiter.extend_now(Admission.model_validate(args[0]), None if ttl is None else float(ttl))
            else:
                result = self._limiter.state_now(Subject.model_validate(args[0]))
        except ConflictError as exc:
            return {"id": call_id, "conflict": exc.message, "param": exc.param}
        except (CrossLogicError, ValueError, TypeError, IndexError) as exc:
            # A malformed call from a client of another version: that call fails, the stream lives.
            return {"id": call_id, "failed": f"{type(exc).__name__}: {exc}"}
        return {"id": call_id, "ok": encode(result)}


class WireClient:
    """One connection to a `WireServer`; safe for concurrent calls from one event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._closed = False
        self._receiver = asyncio.get_running_loop().create_task(self._receive())

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout_s: float) -> WireClient:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise WireDown(f"rate-limit stream: cannot connect to {host}:{port}: {exc!r}") from exc
        return cls(reader, writer, timeout_s=timeout_s)

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
        try:
            self._writer.write(_frame({"id": call_id, "op": op, "args": [encode(a) for a in args]}))
            message = await asyncio.wait_for(answer, timeout=self._timeout_s)
        except asyncio.TimeoutError as exc:
            raise WireDown(f"rate-limit stream: no answer to {op} within {self._timeout_s}s") from exc
        finally:
            self._pending.pop(call_id, None)
        if "ok" in message:
            return decode_result(op, message["ok"])
        if "conflict" in message:
            raise ConflictError(str(message["conflict"]), param=message.get("param"))
        raise WireDown(f"rate-limit stream: {op} failed in the limiter: {message.get('failed')}")

    async def _receive(self) -> None:
        try:
            while True:
                message = await _read_frame(self._reader)
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
        self._receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._receiver
