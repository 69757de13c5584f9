"""What crosses between a region and the control plane: heartbeats, gateway requests, engine events.

Heartbeat: agent -> control plane, `POST /internal/regions/v1/heartbeat` (signed, purpose "agent").
Generate: control plane -> regional gateway, `POST /region/v1/generate` (signed, purpose "gateway"),
answered with NDJSON: one engine event per line (`encode_event`), exactly the tuples a local engine
replica yields (crosslogic/engine/base.py), so streams, usage and errors behave as for a local engine.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.regions.signing import REGION_NAME_PATTERN

HEARTBEAT_PATH = "/internal/regions/v1/heartbeat"
GENERATE_PATH = "/region/v1/generate"
GATEWAY_HEALTH_PATH = "/region/v1/health"
NDJSON = "application/x-ndjson"


class VersionSet(BaseModel):
    """The versions a region must share with the control plane (public versions: `2.13.0+cpu` and
    `2.13.0+cu128` are both torch 2.13.0; see crosslogic/regions/versions.py)."""

    model_config = ConfigDict(extra="forbid")

    ray: str = Field(max_length=64)
    vllm: str = Field(max_length=64)
    torch: str = Field(max_length=64)
    crosslogic: str = Field(max_length=64)


class RemoteReplica(BaseModel):
    """One engine replica of a region, as its agent reports it."""

    model_config = ConfigDict(extra="forbid")

    replica_id: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1, max_length=200)
    running: int = Field(default=0, ge=0, le=1_000_000)
    waiting: int = Field(default=0, ge=0, le=1_000_000)
    kv_cache_usage: float = Field(default=0.0, ge=0.0, le=1.0)
    # Requests the replica takes at once (Serve's max_ongoing_requests): the region's capacity.
    capacity: int = Field(default=64, ge=1, le=1_000_000)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    region: str = Field(pattern=REGION_NAME_PATTERN)
    # Where the control plane reaches this region's gateway (http:// or https://).
    gateway_url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=500)
    models: list[str] = Field(default_factory=list, max_length=1000)
    # The served models' cards (context length, task, prefix-cache scope): a control plane without a
    # local engine for a model lists it, and checks requests against it, from these.
    cards: list[ModelCard] = Field(default_factory=list, max_length=1000)
    replicas: list[RemoteReplica] = Field(default_factory=list, max_length=10_000)
    versions: VersionSet
    # How often the agent beats: the control plane drains the region after 3 silent intervals.
    interval_s: float = Field(gt=0, le=300)
    # The agent process (a restarted agent is a new one: for the operator's view only).
    agent_id: str = Field(min_length=1, max_length=100)


class HeartbeatReply(BaseModel):
    region: str
    state: str
    accepted_at: float


class GatewayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    endpoint: Endpoint
    body: dict[str, Any]
    # The control plane's server-owned id: the remote engine request carries it (logs, aborts).
    request_id: str = Field(min_length=1, max_length=200)
    # W3C trace context of the control plane's `engine.call` span (crosslogic/tracing): the region's
    # engine span joins the request's trace. Absent when the request is not traced.
    trace_context: dict[Literal["traceparent", "tracestate"], Annotated[str, Field(max_length=512)]] | None = None


def encode_event(event: EngineEvent) -> bytes:
    """One NDJSON line. JSON keeps the tuple as a list; `decode_event` turns it back."""
    return json.dumps(list(event), separators=(",", ":")).encode() + b"\n"


def decode_event(line: bytes | str) -> EngineEvent:
    value = json.loads(line)
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError("an engine event is a JSON array starting with its kind")
    return tuple(value)
