"""`auth` in the app config: how long an API-key lookup may wait on PostgreSQL, and how long cached
keys keep authenticating while the database is away (crosslogic/auth/key_authenticator.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class KeyAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A cold lookup waits this long before the database is marked down and the request gets 503:
    # long enough for a loaded server, short enough that an outage does not stall every new key.
    lookup_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # While the database is marked down, an uncached key waits only this long (the outage is known;
    # a client is better served by a fast 503 than by a full lookup timeout per request).
    outage_wait_s: float = Field(default=0.25, gt=0, le=60)
    # A cached key keeps authenticating through an outage while its entry is younger than this: no
    # revocation can commit while the database is away, but a partitioned replica would not hear one.
    outage_grace_s: float = Field(default=600.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _outage_wait_within_lookup(self) -> KeyAuthConfig:
        if self.outage_wait_s > self.lookup_timeout_s:
            raise ValueError(
                f"outage_wait_s ({self.outage_wait_s:g}) must not exceed lookup_timeout_s ({self.lookup_timeout_s:g})")
        return self
