"""The steps every OpenAI inference route takes, in order: key, body, schema, scope, model, relay."""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api.accounting import settle_hook
from crosslogic.api.admission import AdmissionGate, admit
from crosslogic.api.body import parse, read_json
from crosslogic.api.context import ApiContext
from crosslogic.api.relay import relay
from crosslogic.api.timing import StageTimer
from crosslogic.engine.base import Endpoint
from crosslogic.errors import CrossLogicError
from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

RequestModel = type[ChatCompletionRequest] | type[CompletionRequest] | type[EmbeddingRequest]


async def serve_openai_request(
    request: Request,
    ctx: ApiContext,
    request_id: str,
    *,
    schema: RequestModel,
    endpoint: Endpoint,
    task: Literal["generate", "embed"],
) -> JSONResponse | StreamingResponse:
    timer = StageTimer()
    # The key first, as OpenAI does: a caller without a valid key learns nothing about the body.
    await ctx.authenticate(request, None)
    timer.mark("auth")
    data = await read_json(request, ctx.max_body_bytes)
    parsed = parse(schema, data)
    timer.mark("body")
    auth = await ctx.authenticate(request, parsed.model)  # scope check (cached: microseconds)
    card = ctx.model_card(parsed.model, task)
    timer.mark("auth")
    admission = await admit(
        ctx.limiter, auth, request_id=request_id, endpoint=endpoint, body=data,
        model=parsed.model, max_model_len=card.max_model_len, lease_ttl_s=ctx.lease_ttl_s,
        headroom=ctx.headroom,
    )
    timer.mark("admit")

    async def confirm() -> dict[str, str]:
        if not admission.overlapped:
            return await admission.confirm()
        try:
            headers = await admission.confirm()
        except CrossLogicError as exc:
            # Refused after the engine call started: the 429 says so, for the operator tracing it.
            _timed_admission(timer, admission)
            exc.headers["server-timing"] = timer.header()
            raise
        _timed_admission(timer, admission)
        return headers

    stream = bool(getattr(parsed, "stream", False))
    try:
        return await relay(
            ctx.gateway, parsed.model, endpoint, data, request_id,
            stream=stream, retries=ctx.retries_before_first_token,
            settle=settle_hook(ctx.usage, auth, parsed.model, request_id, ctx.region, admission),
            timer=timer, confirm=confirm,
        )
    except BaseException:
        # The relay settles whatever reached it; this covers a failure before it took over.
        await admission.settle(0)
        raise


def _timed_admission(timer: StageTimer, admission: AdmissionGate) -> None:
    # `admit` is what the first event still waited for the answer; the answer's own round trip ran
    # alongside the engine call (`admit_overlapped`).
    timer.mark("admit")
    timer.note("admit_overlapped", admission.decision_ms)
