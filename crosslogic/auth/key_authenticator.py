"""API-key authentication on every /v1 request: an in-process cache in front of PostgreSQL.

Warm path (the common case) touches no I/O: parse the header, SHA-256 the secret, one dict lookup,
a constant-time digest comparison, a few field checks. Cold path: one indexed query by lookup prefix.

Freshness: a revocation, expiry change or tenant suspension must reach every replica within 1 s.
PostgreSQL NOTIFY (see `InvalidationListener`) drops the affected entries as soon as the change
commits. While the listener is down the cache keeps entries for at most `offline_ttl_s` (1 s), so the
guarantee holds even then; `cache_ttl_s` is the safety net for anything NOTIFY could ever miss.
A generation counter stops a lookup that raced with an invalidation from re-caching stale data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from crosslogic.auth.context import AuthContext
from crosslogic.auth.invalidation_listener import InvalidationListener
from crosslogic.auth.usage_batcher import KeyUsageBatcher
from crosslogic.errors import AuthenticationError, InsufficientQuotaError, PermissionDeniedError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.tenants import key_secrets
from crosslogic.tenants.api_key_repository import find_key_for_auth
from crosslogic.tenants.models import KeyAuthRecord

log = logging.getLogger(__name__)

_MISSING = "You didn't provide an API key. Send it as 'Authorization: Bearer sk-cl-...'."
_MALFORMED = "Malformed API key: send 'Authorization: Bearer sk-cl-...' with a CrossLogic API key."
_INCORRECT = "Incorrect API key provided."


@dataclass(frozen=True)
class _Entry:
    """A cached lookup. `digest is None` records that no key has this prefix (negative entry)."""

    digest: bytes | None
    context: AuthContext | None
    revoked: bool
    expires_at: float | None  # wall-clock seconds
    tenant_active: bool
    cached_at: float  # monotonic seconds
    tenant_id: UUID | None
    billing_hold: bool = False


class KeyAuthenticator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_ttl_s: float = 30.0,
        offline_ttl_s: float = 1.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        usage_flush_interval_s: float = 5.0,
    ) -> None:
        self._pool = pool
        self._cache_ttl_s = cache_ttl_s
        self._offline_ttl_s = offline_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        self._by_tenant: dict[UUID, set[str]] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._generation = 0
        self.usage = KeyUsageBatcher(pool, flush_interval_s=usage_flush_interval_s)
        self.listener = InvalidationListener(
            pool,
            on_message=self._on_notification,
            on_connected=self.invalidate_all,
            on_lost=self.invalidate_all,
        )
        self.hits = 0
        self.misses = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the invalidation listener and the last-used flusher.

        Does not fail when LISTEN cannot be established yet: the cache then runs with the short
        offline TTL until the listener connects.
        """
        self.usage.start()
        if not await self.listener.start():
            log.warning("auth invalidation listener not connected yet; key cache TTL is %.1fs",
                        self._offline_ttl_s)

    async def close(self) -> None:
        await self.listener.close()
        try:
            await self.usage.close()
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            log.warning("final last_used_at flush failed", exc_info=True)

    # -- the hot path --------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, model: str | None) -> AuthContext:
        """Authenticate an `Authorization` header value; check `model` against the key's scopes.

        Raises AuthenticationError (401, invalid_api_key) or PermissionDeniedError (403). Messages
        never contain any part of the presented secret.
        """
        secret = _bearer_secret(authorization)
        prefix = key_secrets.lookup_prefix(secret)
        entry = self._cache.get(prefix)
        if entry is None or time.monotonic() - entry.cached_at > self._ttl(entry):
            self.misses += 1
            entry = await self._load(prefix)
        else:
            self.hits += 1
        if entry.digest is None or not key_secrets.verify(secret, entry.digest):
            raise AuthenticationError(_INCORRECT)
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
        self.usage.touch(context.key_id)
        return context

    def _ttl(self, entry: _Entry) -> float:
        if not self.listener.connected:
            return self._offline_ttl_s
        return self._negative_ttl_s if entry.digest is None else self._cache_ttl_s

    # -- the cold path -------------------------------------------------------------------------

    async def _load(self, prefix: str) -> _Entry:
        # Single flight: a burst of requests with one uncached key costs one query.
        pending = self._inflight.get(prefix)
        if pending is not None:
            await asyncio.wait([pending])  # unlike awaiting it, our cancellation won't cancel it
            if not pending.cancelled():
                return pending.result()
            # The leader was cancelled (its client went away): look it up ourselves.
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[prefix] = future
        try:
            generation = self._generation
            with translate_db_errors():
                record = await find_key_for_auth(self._pool, prefix)
            entry = _entry_from(record)
            if generation == self._generation:
                self._store(prefix, entry)
            future.set_result(entry)
            return entry
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            if self._inflight.get(prefix) is future:
                del self._inflight[prefix]

    def _store(self, prefix: str, entry: _Entry) -> None:
        self._drop(prefix)
        while len(self._cache) >= self._max_entries:
            self._drop(next(iter(self._cache)))  # oldest insertion first
        self._cache[prefix] = entry
        if entry.tenant_id is not None:
            self._by_tenant.setdefault(entry.tenant_id, set()).add(prefix)

    def _drop(self, prefix: str) -> None:
        entry = self._cache.pop(prefix, None)
        if entry is not None and entry.tenant_id is not None:
            prefixes = self._by_tenant.get(entry.tenant_id)
            if prefixes is not None:
                prefixes.discard(prefix)
                if not prefixes:
                    del self._by_tenant[entry.tenant_id]

    # -- invalidation --------------------------------------------------------------------------

    def invalidate_all(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._by_tenant.clear()

    def invalidate_key(self, prefix: str) -> None:
        self._generation += 1
        self._drop(prefix)

    def invalidate_tenant(self, tenant_id: UUID) -> None:
        self._generation += 1
        for prefix in list(self._by_tenant.get(tenant_id, ())):
            self._drop(prefix)

    def _on_notification(self, message: dict[str, Any] | None) -> None:
        try:
            if message is not None and message.get("table") == "api_keys" and message.get("prefix"):
                self.invalidate_key(str(message["prefix"]))
                return
            if message is not None and message.get("table") == "tenants" and message.get("id"):
                self.invalidate_tenant(UUID(str(message["id"])))
                return
        except ValueError:
            pass
        # Unknown shape: we cannot tell what changed, so nothing cached can be trusted.
        self.invalidate_all()

    @property
    def cached_keys(self) -> int:
        return len(self._cache)


def _bearer_secret(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthenticationError(_MISSING)
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not key_secrets.is_well_formed(secret):
        raise AuthenticationError(_MALFORMED)
    return secret


def _entry_from(record: KeyAuthRecord | None) -> _Entry:
    now = time.monotonic()
    if record is None:
        return _Entry(None, None, False, None, False, now, None)
    key, tenant = record.key, record.tenant
    context = AuthContext(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        key_id=key.id,
        key_name=key.name,
        key_prefix=key.prefix,
        scopes=frozenset(key.scopes),
        key_limits=key.limits,
        tenant_limits=tenant.limits,
        stripe_customer_id=tenant.stripe_customer_id,
    )
    return _Entry(
        digest=bytes(record.secret_digest),
        context=context,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at is not None else None,
        tenant_active=tenant.status == "active",
        cached_at=now,
        tenant_id=tenant.id,
        billing_hold=record.suspended_for_billing,
    )
