"""`metrics:` in the app config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A `key` label (the API key's prefix) on request and token series: one series per key, so off by
    # default; the tenant label is always there (tenants are few, keys can be many per tenant).
    per_key_labels: bool = False
    # How often in-memory counters (usage ledger, auth cache, billing) are copied to Ray's metrics.
    export_interval_s: float = Field(default=5.0, gt=0)
