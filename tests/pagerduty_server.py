"""A strict local PagerDuty Events API v2 receiver (`POST /v2/enqueue`), and a way to run ASGI apps.

Strict where PagerDuty is: a JSON object body, a 32-character routing key, `event_action` one of
trigger / acknowledge / resolve, a `dedup_key` (<= 255 chars) required for acknowledge and resolve,
and for a trigger a `payload` with `summary` (<= 1024 chars), `source` and `severity` (critical, error,
warning, info); unknown fields refused. A valid event is answered 202
`{"status": "success", "message": "Event processed", "dedup_key": ...}`, an invalid one 400
`{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`.

De-duplication as PagerDuty does it: a trigger whose `dedup_key` names an open (triggered or
acknowledged) alert is merged into that alert, not a new one; acknowledge and resolve act on the open
alert and are ignored (still 202) when there is none. `outcomes` records what each accepted event did.

Faults: `fail_next(n, status)` answers the next n events with `status` (429 or 500) without taking them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

ACTIONS = {"trigger", "acknowledge", "resolve"}
SEVERITIES = {"critical", "error", "warning", "info"}
_TOP_LEVEL = {"routing_key", "event_action", "dedup_key", "payload", "client", "client_url", "links", "images"}
_PAYLOAD = {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}


@dataclass
class PagerDutyServer:
    events: list[dict[str, Any]] = field(default_factory=list)  # accepted events, in order
    # dedup_key -> "triggered" | "acknowledged" | "resolved"
    incidents: dict[str, str] = field(default_factory=dict)
    # (dedup_key, "opened" | "merged" | "acknowledged" | "resolved" | "ignored"), one per accepted event
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # every status answered, faults included
    refused: list[list[str]] = field(default_factory=list)
    _faults: list[int] = field(default_factory=list)

    def fail_next(self, n: int, status: int = 500) -> None:
        self._faults.extend([status] * n)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v2/enqueue")
        async def enqueue(request: Request) -> Response:
            if self._faults:
                status = self._faults.pop(0)
                self.answers.append(status)
                message = "Rate limit reached" if status == 429 else "Internal server error"
                return JSONResponse({"status": "error", "message": message}, status_code=status)
            try:
                event = json.loads(await request.body())
            except ValueError:
                event = None
            errors = validate(event)
            if errors:
                self.answers.append(400)
                self.refused.append(errors)
                return JSONResponse({"status": "invalid event", "message": "Event object is invalid",
                                     "errors": errors}, status_code=400)
            assert isinstance(event, dict)
            dedup_key = event.get("dedup_key") or uuid.uuid4().hex
            self.events.append(event)
            self.outcomes.append((dedup_key, self._apply(dedup_key, event["event_action"])))
            self.answers.append(202)
            return JSONResponse({"status": "success", "message": "Event processed", "dedup_key": dedup_key},
                                status_code=202)

        return app

    def _apply(self, dedup_key: str, action: str) -> str:
        is_open = self.incidents.get(dedup_key) in ("triggered", "acknowledged")
        if action == "trigger":
            if is_open:
                return "merged"  # PagerDuty appends it to the open alert's log
            self.incidents[dedup_key] = "triggered"
            return "opened"
        if not is_open:
            return "ignored"  # nothing open under this key: PagerDuty drops it
        self.incidents[dedup_key] = "acknowledged" if action == "acknowledge" else "resolved"
        return self.incidents[dedup_key]


def validate(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = [f"'{k}' is not a valid field" for k in sorted(set(event) - _TOP_LEVEL)]
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32 character integration key")
    action = event.get("event_action")
    if action not in ACTIONS:
        errors.append("'event_action' must be one of trigger, acknowledge, resolve")
    dedup_key = event.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in {"acknowledge", "resolve"} and not dedup_key:
        errors.append(f"'dedup_key' is required for event_action {action}")
    if action == "trigger":
        errors += _validate_payload(event.get("payload"))
    return errors


def _validate_payload(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is required for event_action trigger"]
    errors = [f"'payload.{k}' is not a valid field" for k in sorted(set(payload) - _PAYLOAD)]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) > 1024:
        errors.append("'payload.summary' must be a string of 1 to 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("'payload.source' is required")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' must be one of critical, error, warning, info")
    if "timestamp" in payload:
        try:
            datetime.fromisoformat(payload["timestamp"])
        except (TypeError, ValueError):
            errors.append("'payload.timestamp' must be ISO 8601")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")
    return errors


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Run `app` on a free loopback port in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                           timeout_graceful_shutdown=1))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
