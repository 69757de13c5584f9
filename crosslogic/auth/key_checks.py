"""What a presented API key must pass besides its secret: a well-formed `Authorization: Bearer`
header, then (for a key whose secret matched) not revoked, not expired, its tenant active, the model
within its scopes. Messages never contain any part of the presented secret."""

from __future__ import annotations

import time

from crosslogic.auth.context import AuthContext
from crosslogic.auth.key_cache import KeyEntry
from crosslogic.errors import AuthenticationError, InsufficientQuotaError, PermissionDeniedError
from crosslogic.tenants import key_secrets

_MISSING = "You didn't provide an API key. Send it as 'Authorization: Bearer sk-cl-...'."
_MALFORMED = "Malformed API key: send 'Authorization: Bearer sk-cl-...' with a CrossLogic API key."
INCORRECT = "Incorrect API key provided."


def bearer_secret(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthenticationError(_MISSING)
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not key_secrets.is_well_formed(secret):
        raise AuthenticationError(_MALFORMED)
    return secret


def check_key(entry: KeyEntry, model: str | None) -> AuthContext:
    """The key's context, or the error that refuses it: 401 revoked or expired, 429 billing hold,
    403 tenant suspended or model out of scope."""
    context = entry.context
    assert context is not None
    if entry.revoked:
        raise AuthenticationError("This API key has been revoked.")
    if entry.expires_at is not None and time.time() >= entry.expires_at:
        raise AuthenticationError("This API key has expired.")
    if not entry.tenant_active and entry.billing_hold:
        # OpenAI's answer for an account that cannot pay: 429 insufficient_quota (not retried).
        raise InsufficientQuotaError(
            "The organization of this API key is suspended for billing: update its payment method.",
            headers={"x-should-retry": "false"},
        )
    if not entry.tenant_active:
        raise PermissionDeniedError(
            "The organization of this API key is suspended.", code="tenant_suspended"
        )
    if model is not None and not context.allows_model(model):
        raise PermissionDeniedError(
            f"This API key is not allowed to use the model '{model[:256]}'.", param="model"
        )
    return context
