"""Test-side alert receivers: a webhook receiver app (with faults), a routing key, a wait helper."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

ROUTING_KEY = "R0ut1ngKeyForTheTestIntegrat10n0"  # 32 characters, as PagerDuty issues them
assert len(ROUTING_KEY) == 32


@dataclass
class WebhookReceiver:
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: bool = False  # a receiver that accepts connections and never answers
    _faults: list[int] = field(default_factory=list)

    def fail_next(self, n: int, status: int = 500) -> None:
        self._faults.extend([status] * n)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/alerts")
        async def receive(request: Request) -> Response:
            if self.hang:
                await asyncio.sleep(3600)
            body = await request.body()
            if self._faults:
                return Response(status_code=self._faults.pop(0))
            self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
            return Response(status_code=204)

        return app


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
