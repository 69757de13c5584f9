"""What the /v1 API needs from the serving layer, as an interface.

The Ray Serve ingress implements it with deployment handles (`deployments/gateway.py`); the API
module itself never imports Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel, Field

from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.routing.hints import RoutingHints


class DependencyStatus(BaseModel):
    ok: bool
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class Readiness(BaseModel):
    ready: bool
    dependencies: dict[str, DependencyStatus]


class Gateway(Protocol):
    def models(self) -> list[ModelCard]:
        """Models being served (the configured ones whose engines have started)."""
        ...

    def stream(
        self,
        model: str,
        endpoint: Endpoint,
        body: dict[str, Any],
        request_id: str,
        hints: RoutingHints,
    ) -> AsyncIterator[EngineEvent]:
        """Send one request to an engine replica of `model`; raise CrossLogicError on failure."""
        ...

    async def readiness(self) -> Readiness: ...
