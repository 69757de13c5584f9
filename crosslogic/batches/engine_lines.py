"""Batch lines through the interactive path: the same gateway (routing, engines, retries before the
first token), the same relay and the same usage ledger, one row per line keyed by the line's request id.

What a line skips is the rate limiter: batch work is admitted by spare engine capacity instead
(`InteractiveLoad`), and does not spend the tenant's interactive quota.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, Protocol

from crosslogic.api.accounting import settle_hook
from crosslogic.api.admission import AdmissionGate, Admitted
from crosslogic.api.cache_salt import salted_body
from crosslogic.api.gateway import Gateway, Readiness
from crosslogic.api.relay import relay
from crosslogic.auth.context import AuthContext
from crosslogic.batches.store import Batch, Line
from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.engine.priority import batch_line_body
from crosslogic.errors import CrossLogicError, ModelNotFoundError, PermissionDeniedError
from crosslogic.metering.records import UsageRecord
from crosslogic.routing.hints import RoutingHints
from crosslogic.tenants.models import Limits

_ENDPOINTS: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": ("chat", "generate"),
    "/v1/embeddings": ("embeddings", "embed"),
}


class InteractiveLoad:
    """The gateway interactive requests use, counting what they have in flight on this replica: batch
    lines start only while that count is below a threshold and the line's engines leave room (`has_room`)."""

    def __init__(
        self, inner: Gateway, busy_threshold: int, engines: Callable[[str], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.busy_threshold = busy_threshold
        # Whether the engines of a model leave room (crosslogic/batches/engine_room.py); None: not asked.
        self.engines = engines
        self.in_flight = 0

    def models(self) -> list[ModelCard]:
        return self.inner.models()

    def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncIterator[EngineEvent]:
        return self._counted(self.inner.stream(model, endpoint, body, request_id, hints))

    async def _counted(self, events: AsyncIterator[EngineEvent]) -> AsyncIterator[EngineEvent]:
        self.in_flight += 1
        try:
            async for event in events:
                yield event
        finally:
            self.in_flight -= 1

    async def readiness(self) -> Readiness:
        return await self.inner.readiness()

    def has_room(self, model: str | None = None) -> bool:
        if self.in_flight >= self.busy_threshold:
            return False
        return model is None or self.engines is None or self.engines(model)


class LedgerWriter(Protocol):
    async def write(self, records: list[UsageRecord]) -> None: ...


class UsageNotWritten(Exception):
    """A line ran but its usage row could not be written: the line stays pending and runs again under
    the same request id (the ledger's key), so it is metered once."""


class BatchUsage:
    """The usage sink of one batch line: each record marked with its batch and the batch price
    multiplier, kept until the executor writes it to the ledger, before the line's result is recorded.
    Through the recorder's buffer instead, a replica killed between the two would leave a line in the
    output file that was never metered."""

    def __init__(self, batch_id: str, price_multiplier: float) -> None:
        self._batch_id = batch_id
        self._multiplier = price_multiplier
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord) -> None:
        self.records.append(replace(record, batch_id=self._batch_id, price_multiplier=self._multiplier))


class EngineLineExecutor:
    def __init__(
        self, gateway: Gateway, usage: LedgerWriter, *, region: str, retries: int, price_multiplier: float,
    ) -> None:
        self._gateway = gateway
        self._usage = usage
        self._region = region
        self._retries = retries
        self._multiplier = price_multiplier

    async def run(self, batch: Batch, line: Line) -> tuple[int, dict[str, Any]]:
        assert line.body is not None
        endpoint, task = _ENDPOINTS[batch.endpoint]
        model = str(line.body["model"])
        auth = _batch_auth(batch)
        try:
            if not batch.allows_model(model):  # as the key's interactive request would be refused
                raise PermissionDeniedError(
                    f"This API key is not allowed to use the model '{model[:256]}'.", param="model")
            card = next((c for c in self._gateway.models() if c.served_name == model and c.task == task), None)
            if card is None:
                raise ModelNotFoundError(
                    f"The model '{model}' does not exist or you do not have access to it.", param="model")
            body = batch_line_body(salted_body(line.body, card.prefix_cache_scope, auth))
            gate = AdmissionGate(Admitted({}, None, None))
            usage = BatchUsage(batch.id, self._multiplier)
            try:
                response = await relay(
                    self._gateway, model, endpoint, body, line.request_id, stream=False, retries=self._retries,
                    settle=settle_hook(usage, auth, model, line.request_id, self._region, gate),
                )
            finally:
                await self._write(usage.records)
        except CrossLogicError as exc:
            return exc.status_code, exc.body()
        return response.status_code, json.loads(bytes(response.body))

    async def _write(self, records: list[UsageRecord]) -> None:
        try:
            await self._usage.write(records)
        except Exception as exc:
            raise UsageNotWritten(repr(exc)) from exc


def _batch_auth(batch: Batch) -> AuthContext:
    # The batch's owner, as metering and the prefix-cache salt need it; no limits (see the module doc).
    return AuthContext(
        tenant_id=batch.tenant_id, tenant_name="", key_id=batch.key_id or uuid.UUID(int=0), key_name="batch",
        key_prefix="batch", scopes=frozenset(), key_limits=Limits(), tenant_limits=Limits(),
        stripe_customer_id=None,
    )
