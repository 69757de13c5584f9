"""The steps every OpenAI inference route takes, in order: key, body, schema, scope, model, relay."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from crosslogic.api import request_log
from crosslogic.api.accounting import settle_hook
from crosslogic.api.admission import AdmissionGate, admit
from crosslogic.api.body import parse, read_json
from crosslogic.api.cache_salt import salted_body
from crosslogic.api.context import ApiContext
from crosslogic.api.relay import relay
from crosslogic.api.request_ids import request_ids
from crosslogic.api.timing import StageTimer
from crosslogic.auth.context import AuthContext
from crosslogic.engine.base import Endpoint
from crosslogic.engine.priority import prioritized_body
from crosslogic.errors import CrossLogicError
from crosslogic.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from crosslogic.protocol.responses import ResponsesRequest
from crosslogic.regions.preference import PREFERENCE_HEADER, region_preference
from crosslogic.routing.policy_config import SESSION_HEADER
from crosslogic.telemetry.request_metrics import observation
from crosslogic.tracing.request_trace import request_trace

RequestModel = (
    type[ChatCompletionRequest] | type[CompletionRequest] | type[EmbeddingRequest] | type[ResponsesRequest]
)
Answer = JSONResponse | StreamingResponse


class EndpointHooks(Protocol):
    """What a route adds to the common steps (the Responses API: continuation and storage)."""

    async def prepare(self, auth: AuthContext, parsed: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The body to admit and send, made from the client's once its key and model checked out."""
        ...

    async def answered(self, response: Answer) -> Answer: ...


async def serve_openai_request(
    request: Request,
    ctx: ApiContext,
    request_id: str,
    *,
    schema: RequestModel,
    endpoint: Endpoint,
    task: Literal["generate", "embed"],
    hooks: EndpointHooks | None = None,
) -> JSONResponse | StreamingResponse:
    timer = StageTimer()
    trace = request_trace(request.scope)  # spans per stage when tracing is on (crosslogic/tracing)
    log_entry = request_log.begin(request, request_id, request_ids(request)[1], endpoint, ctx.region)
    # The key first, as OpenAI does: a caller without a valid key learns nothing about the body.
    with trace.stage("auth"):
        log_entry.auth = await ctx.authenticate(request, None)
    timer.mark("auth")
    data = await read_json(request, ctx.max_body_bytes)
    parsed = parse(schema, data)
    log_entry.model, log_entry.stream = parsed.model, bool(getattr(parsed, "stream", False))
    timer.mark("body")
    auth = await ctx.authenticate(request, parsed.model)  # scope check (cached: microseconds)
    card = ctx.model_card(parsed.model, task)
    preference = region_preference(request.headers.get(PREFERENCE_HEADER), auth)
    observed = observation(request.scope)
    observed.identify(auth, parsed.model, timer)  # labels only from a valid key and a served model
    trace.identify(str(auth.tenant_id), parsed.model, endpoint, log_entry.stream)
    if hooks is not None:
        data = await hooks.prepare(auth, parsed, data)
    data = salted_body(data, card.prefix_cache_scope, auth)  # this tenant's own prefix cache
    data = prioritized_body(data, auth.fair_weight)  # its tier, for engines scheduling by priority
    timer.mark("auth")
    admitting = trace.start("admission")
    try:
        admission = await admit(
            ctx.limiter, auth, request_id=request_id, endpoint=endpoint, body=data,
            model=parsed.model, max_model_len=card.max_model_len, lease_ttl_s=ctx.lease_ttl_s,
            headroom=ctx.headroom,
        )
    except BaseException as exc:
        admitting.end(exc)
        raise
    trace.decided(admitting, admission)  # an overlapped decision ends it later
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
    gateway = observed.gateway(ctx.gateway)
    if ctx.fairness is not None:  # a saturated model's slots go to tenants by weight (crosslogic/fairness)
        gateway = ctx.fairness.gateway(gateway, str(auth.tenant_id), auth.fair_weight)
    try:
        response = await relay(
            gateway, parsed.model, endpoint, data, request_id,
            stream=stream, retries=ctx.retries_before_first_token,
            settle=trace.settling(log_entry.settling(observed.settled(settle_hook(
                ctx.usage, auth, parsed.model, request_id, ctx.region, admission,
                client_request_id=request_ids(request)[1])))),
            timer=timer, confirm=confirm, region_preference=preference, trace=trace,
            session_key=request.headers.get(SESSION_HEADER),
        )
    except BaseException:
        # The relay settles whatever reached it; this covers a failure before it took over.
        await admission.settle(0)
        raise
    if hooks is not None:
        response = await hooks.answered(response)
    log_entry.answered(response)
    if isinstance(response, StreamingResponse):
        # A stream outlives its authentication: it ends if the key or tenant stops being allowed.
        response.body_iterator = ctx.live_streams.guard(
            response.body_iterator, subject=auth.key_prefix,
            check=lambda: ctx.authenticate(request, parsed.model),
        )
    return response


def _timed_admission(timer: StageTimer, admission: AdmissionGate) -> None:
    # `admit` is what the first event still waited for the answer; the answer's own round trip ran
    # alongside the engine call (`admit_overlapped`).
    timer.mark("admit")
    timer.note("admit_overlapped", admission.decision_ms)
