"""Building limiter subjects and admission requests from who is calling (`AuthContext`) and from
stored keys and tenants (admin API's live limit view)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from crosslogic.ratelimit.models import AdmissionRequest, Limits, Subject

if TYPE_CHECKING:
    from crosslogic.auth.context import AuthContext


class HasLimits(Protocol):
    """`crosslogic.tenants.models.Limits` or anything shaped like it."""

    @property
    def rpm(self) -> int | None: ...

    @property
    def tpm(self) -> int | None: ...

    @property
    def max_concurrency(self) -> int | None: ...


def limits_of(value: HasLimits | None) -> Limits:
    if value is None:
        return Limits()
    return Limits(rpm=value.rpm, tpm=value.tpm, max_concurrency=value.max_concurrency)


def tenant_subject(tenant_id: UUID | str, limits: HasLimits | None) -> Subject:
    return Subject(kind="tenant", id=str(tenant_id), tenant_id=str(tenant_id),
                   limits=limits_of(limits))


def key_subject(tenant_id: UUID | str, key_id: UUID | str, limits: HasLimits | None) -> Subject:
    return Subject(kind="key", id=str(key_id), tenant_id=str(tenant_id), limits=limits_of(limits))


def admission_request_for(
    auth: AuthContext,
    *,
    request_id: str,
    reserved_tokens: int,
    model: str | None,
    lease_ttl_s: float = 60.0,
) -> AdmissionRequest:
    """The admission of one authenticated request: the key's and its tenant's limits both apply."""
    return AdmissionRequest(
        request_id=request_id,
        tenant=tenant_subject(auth.tenant_id, auth.tenant_limits),
        key=key_subject(auth.tenant_id, auth.key_id, auth.key_limits),
        reserved_tokens=reserved_tokens,
        lease_ttl_s=lease_ttl_s,
        model=model,
        key_prefix=auth.key_prefix,
    )
