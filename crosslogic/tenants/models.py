"""Tenant and API-key models: what the repositories return and what the admin plane accepts.

`*Create` / `TenantUpdate` double as admin request bodies, so they validate strictly (unknown
fields refused). Records never carry a key's secret or digest; `CreatedApiKey` carries the secret
exactly once, at creation. Lists come back as `crosslogic.storage.pagination.Page`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from crosslogic.regions.signing import REGION_NAME_PATTERN

TenantStatus = Literal["active", "suspended"]

# NULL / None means "no limit at this level".
LimitValue = Annotated[int, Field(ge=1, le=2_000_000_000)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
StripeCustomerId = Annotated[str, Field(pattern=r"^cus_[A-Za-z0-9]{1,250}$")]
ModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s\x00-\x1f]+$")]
# Requests go to this region first (crosslogic/regions/preference.py); the registry need not know it yet.
RegionName = Annotated[str, Field(pattern=REGION_NAME_PATTERN)]
# A tenant's share of a saturated model's engine slots relative to others (crosslogic/fairness).
FairWeight = Annotated[float, Field(gt=0, le=1000)]


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True)

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _LimitsRequest(_Request):
    rpm: LimitValue | None = None
    tpm: LimitValue | None = None
    max_concurrency: LimitValue | None = None


class TenantCreate(_LimitsRequest):
    name: Name
    stripe_customer_id: StripeCustomerId | None = None
    preferred_region: RegionName | None = None
    weight: FairWeight | None = None


class ApiKeyLimitsUpdate(_LimitsRequest):
    """Only the limits present are changed; an explicit null clears one (the key is then bound by
    its tenant's limits alone). `preferred_region` likewise (null: the tenant's preference applies)."""

    preferred_region: RegionName | None = None


class TenantUpdate(_LimitsRequest):
    """Only the fields present are changed; an explicit null clears a limit (unlimited)."""

    status: TenantStatus | None = None
    stripe_customer_id: StripeCustomerId | None = None
    preferred_region: RegionName | None = None
    # null: the app's fairness.default_weight
    weight: FairWeight | None = None

    @field_validator("status")
    @classmethod
    def _status_not_null(cls, value: TenantStatus | None) -> TenantStatus | None:
        if value is None:
            raise ValueError("status cannot be null")
        return value


class Tenant(BaseModel):
    id: UUID
    name: str
    status: TenantStatus
    stripe_customer_id: str | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    created_at: datetime
    updated_at: datetime
    preferred_region: str | None = None
    weight: float | None = None

    @property
    def limits(self) -> Limits:
        return Limits(rpm=self.rpm, tpm=self.tpm, max_concurrency=self.max_concurrency)


class ApiKeyCreate(_LimitsRequest):
    name: Name
    # Model names this key may use; empty means every model.
    scopes: list[ModelName] = Field(default_factory=list, max_length=256)
    expires_at: AwareDatetime | None = None
    preferred_region: RegionName | None = None

    @field_validator("scopes")
    @classmethod
    def _dedupe(cls, scopes: list[str]) -> list[str]:
        return list(dict.fromkeys(scopes))


class ApiKeyRecord(BaseModel):
    id: UUID
    tenant_id: UUID
    name: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    created_at: datetime
    last_used_at: datetime | None
    preferred_region: str | None = None

    @property
    def limits(self) -> Limits:
        return Limits(rpm=self.rpm, tpm=self.tpm, max_concurrency=self.max_concurrency)


class CreatedApiKey(BaseModel):
    key: ApiKeyRecord
    # The full secret: returned once, never stored, never retrievable again.
    secret: str


class KeyAuthRecord(BaseModel):
    """Everything an authentication decision needs, read in one query by lookup prefix."""

    key: ApiKeyRecord
    secret_digest: bytes
    tenant: Tenant
    # Suspended by a billing event (payment failed, subscription cancelled), not by an operator.
    suspended_for_billing: bool = False
