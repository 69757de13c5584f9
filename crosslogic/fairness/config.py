"""The `fairness:` section of the app config (crosslogic/config.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FairnessConfig(BaseModel):
    """Off by default. On: each ingress replica holds at most `slots_per_replica` requests per engine
    replica of a model in flight (its own plus what the router says other ingress replicas send);
    past that, requests wait in a weighted fair queue per model (crosslogic/fairness/fair_queue.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Engine slots per replica of a model: about the batch an engine runs at full speed (vLLM's
    # max_num_seqs); beyond it requests only queue inside the engine, first come first served,
    # where no tenant's share can be kept.
    slots_per_replica: int = Field(default=16, ge=1, le=4096)
    # Slots per engine replica beyond those a tenant under its weighted share may take at once
    # instead of waiting for the flood's next slot to free: keep slots_per_replica + this within
    # what an engine batches (max_num_seqs), so these run at once too.
    burst_per_replica: int = Field(default=4, ge=0, le=4096)
    # A request waits this long for a slot, then gets a 503 with retry-after.
    max_wait_s: float = Field(default=30.0, gt=0, le=3600)
    # Requests waiting per model at once; the next one is answered 503 at once.
    max_waiting: int = Field(default=4096, ge=1, le=1_000_000)
    # A tenant's weight when it has none of its own (tenants.weight).
    default_weight: float = Field(default=1.0, gt=0, le=1000)
