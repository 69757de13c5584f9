"""`POST /internal/regions/v1/heartbeat`: where regional agents report (HEARTBEAT_PATH).

The body is read raw and capped: the signature covers the exact bytes, so nothing may parse or
re-encode it before HeartbeatVerifier has checked them. What to do with an accepted heartbeat is the
caller's (`publish`: the ingress hands it to the router actor), which keeps this module free of Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from crosslogic.api.body import read_capped
from crosslogic.api.errors import error_response
from crosslogic.api.request_ids import request_ids
from crosslogic.errors import CrossLogicError, ServiceUnavailableError
from crosslogic.regions.heartbeats import AcceptedHeartbeat, HeartbeatVerifier
from crosslogic.regions.protocol import HEARTBEAT_PATH, HeartbeatReply

log = logging.getLogger("crosslogic.regions.routes")

# A heartbeat of 1,000 replicas is ~200 KB; anything near this is not an agent.
MAX_HEARTBEAT_BYTES = 1 << 20

Publish = Callable[[AcceptedHeartbeat], Awaitable[None]]
ClientOf = Callable[[Mapping[str, Any]], str]


def _peer(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def build_heartbeat_router(
    verifier: HeartbeatVerifier,
    publish: Publish,
    *,
    client_of: ClientOf | None = None,
    max_body_bytes: int = MAX_HEARTBEAT_BYTES,
) -> APIRouter:
    """`client_of`: the audited source address of a request (the ingress passes its failed-auth
    throttle's, which ignores a client-written X-Forwarded-For); default the TCP peer."""
    source_of = client_of or _peer
    router = APIRouter(tags=["regions"], include_in_schema=False)

    @router.post(HEARTBEAT_PATH, response_model=HeartbeatReply)
    async def heartbeat(request: Request) -> Any:
        try:
            body = await read_capped(request, max_body_bytes)
            accepted = await verifier.verify(
                request.method, request.url.path, request.headers, body,
                source=source_of(request.scope), request_id=request_ids(request)[0],
            )
            try:
                await publish(accepted)
            except Exception as exc:  # the router actor restarting: the agent beats again soon
                log.warning("could not publish the heartbeat of %s: %r", accepted.heartbeat.region, exc)
                raise ServiceUnavailableError("the control plane could not take the heartbeat; retry") from None
        except CrossLogicError as exc:
            return error_response(exc)
        reply = HeartbeatReply(
            region=accepted.heartbeat.region,
            state="drained" if accepted.operator_drained else "active",
            accepted_at=time.time(),
        )
        return JSONResponse(reply.model_dump())

    return router
