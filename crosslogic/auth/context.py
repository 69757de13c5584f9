"""Who is calling: the result of authenticating an API key, handed to admission, routing and metering."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, ConfigDict

from crosslogic.tenants.models import Limits


class AuthContext(BaseModel):
    """Immutable and shared between requests of one key (the cache hands out the same object).

    Limits are per level, not merged: `key_limits` bound this key alone, `tenant_limits` bound all
    keys of the tenant together; None at a level means no limit at that level.
    """

    model_config = ConfigDict(frozen=True)

    tenant_id: UUID
    tenant_name: str
    key_id: UUID
    key_name: str
    key_prefix: str
    # Model names this key may use; empty means every model.
    scopes: frozenset[str]
    key_limits: Limits
    tenant_limits: Limits
    stripe_customer_id: str | None
    # The region requests of this key prefer: the key's own, else its tenant's (a header overrides both).
    preferred_region: str | None = None
    # The tenant's fair-share weight under saturation (crosslogic/fairness); None: the default.
    fair_weight: float | None = None

    def allows_model(self, model: str) -> bool:
        return not self.scopes or model in self.scopes
