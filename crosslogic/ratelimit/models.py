"""Protocol of the rate limiter: what the ingress asks (`AdmissionRequest`) and what it gets back.

Both backends (Redis and in-memory) return exactly these models, so the ingress, the headers module and
the operator view never care which backend answered.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SubjectKind = Literal["key", "tenant"]
LimitName = Literal["rpm", "tpm", "concurrency"]
BackendName = Literal["redis", "memory", "actor", "local"]

# Request ids become Redis hash fields and sorted-set members; `#` is reserved for bookkeeping fields.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,200}$"


class Limits(BaseModel):
    """Effective limits of one subject; None means unlimited, 0 means nothing is allowed."""

    model_config = ConfigDict(frozen=True)

    rpm: int | None = Field(default=None, ge=0)
    tpm: int | None = Field(default=None, ge=0)
    max_concurrency: int | None = Field(default=None, ge=0)

    @property
    def windowed(self) -> bool:
        """Whether this subject needs a request log (unlimited subjects skip it to save memory)."""
        return self.rpm is not None or self.tpm is not None

    def scaled_down(self, replicas: int) -> Limits:
        """This replica's share of the limits, used while the shared backend is unreachable."""

        def share(value: int | None) -> int | None:
            if value is None or value == 0:
                return value
            return max(1, value // replicas)

        return Limits(
            rpm=share(self.rpm), tpm=share(self.tpm), max_concurrency=share(self.max_concurrency)
        )


class Subject(BaseModel):
    """One thing limits apply to. Keys live under their tenant so all state of one admission shares a
    Redis Cluster slot (the hash tag is the tenant id)."""

    model_config = ConfigDict(frozen=True)

    kind: SubjectKind
    id: str = Field(min_length=1, max_length=200)
    tenant_id: str = Field(min_length=1, max_length=200)
    limits: Limits = Field(default_factory=Limits)


class AdmissionRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    tenant: Subject
    key: Subject | None = None
    # prompt tokens + max output tokens (or the model's default): reserved now, settled later.
    reserved_tokens: int = Field(ge=0, le=10**12)
    lease_ttl_s: float = Field(default=60.0, gt=0, le=3600)
    # Telemetry labels only; never used for decisions.
    model: str | None = None
    key_prefix: str | None = None

    @model_validator(mode="after")
    def _one_tenant(self) -> AdmissionRequest:
        # All state of one admission must share the tenant's Redis Cluster slot.
        if self.tenant.kind != "tenant" or self.tenant.id != self.tenant.tenant_id:
            raise ValueError("tenant must be a tenant subject")
        if self.key is not None and (self.key.kind != "key" or self.key.tenant_id != self.tenant.id):
            raise ValueError("key must be a key subject of the same tenant")
        return self

    def subjects(self) -> list[Subject]:
        """Key first: when both reject with the same retry time the key's limit is the one reported."""
        return [self.key, self.tenant] if self.key is not None else [self.tenant]


class WindowStatus(BaseModel):
    """One limit of one subject as the x-ratelimit-* headers show it."""

    limit: int
    remaining: int
    # Seconds until the oldest request in the window leaves it, i.e. until quota next comes back.
    reset_s: float


class SubjectStatus(BaseModel):
    kind: SubjectKind
    id: str
    limits: Limits
    requests: WindowStatus | None = None
    tokens: WindowStatus | None = None
    active_leases: int = 0


class Rejection(BaseModel):
    subject_kind: SubjectKind
    subject_id: str
    limit: LimitName
    value: int
    requested: int
    # None when the request can never fit (it asks for more than the limit itself).
    retry_after_s: float | None
    reset_at: float | None = Field(default=None, description="epoch seconds when retrying can succeed")


class Admission(BaseModel):
    request_id: str
    tenant_id: str
    key_id: str | None
    admitted: bool
    reserved_tokens: int
    lease_ttl_s: float
    backend: BackendName
    rejection: Rejection | None = None
    subjects: list[SubjectStatus] = Field(default_factory=list)
    model: str | None = None
    key_prefix: str | None = None

    @property
    def requests(self) -> WindowStatus | None:
        return _tightest([s.requests for s in self.subjects])

    @property
    def tokens(self) -> WindowStatus | None:
        return _tightest([s.tokens for s in self.subjects])

    def tenant_status(self) -> SubjectStatus | None:
        return next((s for s in self.subjects if s.kind == "tenant"), None)

    def request_subjects(self) -> list[Subject]:
        """The subjects whose state this admission touched (settle and extend need only identities)."""
        tenant = Subject(kind="tenant", id=self.tenant_id, tenant_id=self.tenant_id)
        if self.key_id is None:
            return [tenant]
        return [Subject(kind="key", id=self.key_id, tenant_id=self.tenant_id), tenant]


class Settlement(BaseModel):
    request_id: str
    # Reserved minus actual, never negative; tokens beyond the reservation are still counted.
    refunded_tokens: int = 0
    lease_released: bool = False
    # False when the backend could not be reached; the lease then expires by its TTL.
    ok: bool = True
    tenant_active_leases: int | None = None


class SubjectState(BaseModel):
    """Operator view of one key or tenant (GET /admin/v1/{keys,tenants}/{id}/limits)."""

    kind: SubjectKind
    id: str
    tenant_id: str
    limits: Limits
    window_s: float
    requests_in_window: int
    tokens_in_window: int
    remaining_requests: int | None
    remaining_tokens: int | None
    reset_s: float
    active_leases: int
    backend: BackendName


def _tightest(statuses: list[WindowStatus | None]) -> WindowStatus | None:
    known = [s for s in statuses if s is not None]
    if not known:
        return None
    return min(known, key=lambda s: (s.remaining, -s.reset_s))
