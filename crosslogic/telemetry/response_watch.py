"""What an ASGI response told the client: the status and headers it started with, and, when the app
failed before starting one, the status that failure stands for.

Shared by the outermost observers (the request metrics and the request's root span), so both record
the same status for the same answer: a client gone before any response is 499 (nginx's convention),
any other exception escaping the app is 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED = 499


class WatchedResponse:
    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: Iterable[tuple[bytes, bytes]] = ()

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, noting its response's start; re-raises whatever the app raised."""
        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = int(message["status"])
                self.headers = message.get("headers", ())
            await send(message)

        try:
            await app(scope, receive, watched_send)
        except BaseException as exc:
            if not self.status:
                self.status = CLIENT_CLOSED if isinstance(exc, asyncio.CancelledError) else 500
            raise

    @property
    def final_status(self) -> int:
        """The status the client got (499 when the app returned without ever answering)."""
        return self.status or CLIENT_CLOSED

    def header(self, name: bytes) -> bytes | None:
        """A response header's raw value (`name` lower-case, as ASGI carries it)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None
