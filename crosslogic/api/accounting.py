"""What happens when a request ends, whatever the path: the rate-limit lease is settled to the tokens
the engine counted, and usage goes to the ledger.

`settle_hook` builds the per-request `Settle` callback the relay calls exactly once (success, engine
error, client disconnect). It must never raise: accounting failures are logged and counted by the
recorder, never turned into a client error after the fact.
"""

from __future__ import annotations

import logging
from typing import Protocol

from crosslogic.api.admission import AdmissionGate
from crosslogic.api.relay import Outcome, Settle
from crosslogic.auth.context import AuthContext
from crosslogic.metering.records import UsageRecord, UsageStatus

logger = logging.getLogger(__name__)

_STATUS = {
    "finished": UsageStatus.FINISHED,
    "failed": UsageStatus.FAILED,
    "cancelled": UsageStatus.CANCELLED,
}


class UsageSink(Protocol):
    def record(self, record: UsageRecord) -> None: ...


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000.0, 3)


def settle_hook(
    sink: UsageSink, auth: AuthContext, model: str, request_id: str, region: str, admission: AdmissionGate,
    *, client_request_id: str | None = None,
) -> Settle:
    """`request_id` is the server's (it keys the ledger row); `client_request_id` is stored beside it."""
    async def settle(outcome: Outcome) -> None:
        granted = True
        try:
            granted = await admission.settle(outcome.prompt_tokens + outcome.completion_tokens)
        except Exception:
            logger.exception("could not settle the rate-limit lease of request %s", request_id)
        if not granted:
            return  # refused after an overlapped start: the client got a 429, nothing to meter
        if outcome.replica is None and outcome.first_token_at is None:
            return  # never reached an engine: nothing was processed, nothing to meter
        try:
            sink.record(
                UsageRecord(
                    request_id=request_id,
                    client_request_id=client_request_id,
                    tenant_id=auth.tenant_id,
                    key_id=auth.key_id,
                    model=model,
                    # Where it was served: a remote region's name, else this cluster's.
                    region=outcome.region or region,
                    prompt_tokens=outcome.prompt_tokens,
                    completion_tokens=outcome.completion_tokens,
                    status=_STATUS.get(outcome.status, UsageStatus.FAILED),
                    ttft_ms=_ms(outcome.started_at, outcome.first_token_at),
                    total_ms=_ms(outcome.started_at, outcome.finished_at),
                )
            )
        except Exception:
            logger.exception("could not record usage for request %s", request_id)

    return settle
