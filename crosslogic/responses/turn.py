"""One POST /v1/responses at the ingress, around the steps every inference route takes
(crosslogic/api/endpoint.py: key, body, admission, routing, engine, relay, metering).

Before admission it resolves `previous_response_id` (as this tenant only: another tenant's id is a
404 like an unknown one) into the input the engine answers, so the rate limiter reserves for the
whole conversation. When the answer is known it stores the response, unless the client sent
`store: false`: a JSON answer before it is returned, a stream's before its last event reaches the
client, so a retrieve right after the answer finds it on any ingress replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.auth.context import AuthContext
from crosslogic.protocol.responses import ResponsesRequest
from crosslogic.responses.events import CREATED, TERMINAL, find_response, is_failure, without_end
from crosslogic.responses.history import conversation
from crosslogic.responses.ids import response_id
from crosslogic.responses.store import ResponseStatus, ResponseStore, StoredResponse

logger = logging.getLogger(__name__)

_STATUSES: frozenset[str] = frozenset({"completed", "incomplete", "failed", "cancelled"})


class ResponsesTurn:
    """The `EndpointHooks` of one Responses request."""

    def __init__(self, store: ResponseStore, request_id: str) -> None:
        self._store = store
        self._request_id = request_id
        self._id = response_id(request_id)
        self._auth: AuthContext | None = None
        self._parsed: ResponsesRequest | None = None
        self._request: dict[str, Any] = {}
        self._items: list[dict[str, Any]] = []

    async def prepare(self, auth: AuthContext, parsed: ResponsesRequest, body: dict[str, Any]) -> dict[str, Any]:
        self._auth, self._parsed, self._request = auth, parsed, body
        previous = None
        if parsed.previous_response_id is not None:
            previous = await self._store.get(
                auth.tenant_id, parsed.previous_response_id, param="previous_response_id"
            )
        self._items = conversation(previous, parsed.input)
        # The engine stores nothing (`store` is ours); it echoes previous_response_id.
        engine_body = {key: value for key, value in body.items() if key != "store"}
        if previous is not None:
            engine_body["input"] = self._items
        return engine_body

    async def answered(self, response: JSONResponse | StreamingResponse) -> JSONResponse | StreamingResponse:
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._relayed(response.body_iterator)
        elif response.status_code == 200 and self._keeps():
            await self._save(json.loads(bytes(response.body)))
        return response

    def _keeps(self) -> bool:
        return self._parsed is not None and self._parsed.store

    async def _relayed(self, chunks: Any) -> Any:
        """The client's stream: as the engine sent it, without the relay's end marker; stored at its end."""
        created: dict[str, Any] | None = None
        final: dict[str, Any] | None = None
        failed = False
        try:
            async for chunk in chunks:
                created = created or find_response(chunk, CREATED)
                if final is None:
                    final = find_response(chunk, TERMINAL)
                    if final is not None and self._keeps():
                        await self._save(final)
                failed = failed or is_failure(chunk)
                text = without_end(chunk)
                if text:
                    yield text
        finally:
            if final is None and created is not None and self._keeps():
                # Cut short (client gone, key revoked, engine failure): stored as what it became.
                ended = {**created, "status": "failed" if failed else "cancelled"}
                await asyncio.shield(self._save(ended))
            await chunks.aclose()

    async def _save(self, body: dict[str, Any]) -> None:
        """Store the response; a failure is logged, never turned into an error after the answer."""
        assert self._auth is not None and self._parsed is not None
        usage = body.get("usage") or {}
        stored = StoredResponse(
            id=self._id, tenant_id=self._auth.tenant_id, key_id=self._auth.key_id,
            request_id=self._request_id, model=self._parsed.model,
            status=status_of(body),
            previous_response_id=self._parsed.previous_response_id,
            request=self._request, input_items=self._items, response=body,
            input_tokens=int(usage.get("input_tokens") or 0), output_tokens=int(usage.get("output_tokens") or 0),
        )
        try:
            await self._store.save(stored)
        except Exception:
            logger.exception("could not store response %s", self._id)


def status_of(body: dict[str, Any]) -> ResponseStatus:
    """The stored status: the response's own, or failed for one no stored response may have."""
    status = body.get("status")
    return status if status in _STATUSES else "failed"
