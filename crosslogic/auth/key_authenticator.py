"""API-key authentication on every /v1 request: an in-process cache in front of PostgreSQL.

Warm path (the common case) touches no I/O: parse the header, SHA-256 the secret, one dict lookup,
a constant-time digest comparison, a few field checks. Cold path: one indexed query by lookup prefix.

Freshness: a revocation, expiry change or tenant suspension must reach every replica within 1 s.
PostgreSQL NOTIFY (see `InvalidationListener`) drops the affected entries as soon as the change
commits. While the listener is down the cache keeps entries for at most `offline_ttl_s` (1 s), so the
guarantee holds even then; `cache_ttl_s` is the safety net for anything NOTIFY could ever miss.
A generation counter stops a lookup that raced with an invalidation from re-caching stale data.
The parts live beside this module: the cache (`key_cache`), the lookups (`key_lookup`), NOTIFY
handling (`revocation`) and the checks a key must pass (`key_checks`); this one puts them together.

Failures: unknown prefixes are remembered in a separate, bounded negative cache, so a flood of random
keys can never evict the entries of real keys. Failed attempts are throttled per client address and
per prefix (`crosslogic.auth.throttle`) before any lookup. An attempt that proves its secret without
the database is never throttled: it matches a cached key's digest, or the digest of a key that
authenticated on this replica before (`_proven`, kept across cache invalidations, LRU-bounded). So
an attacker sharing a legitimate client's address (every client shares HAProxy's, see
`crosslogic.auth.client_address`) or spraying a key's prefix cannot lock that key out; only a key
never seen on this replica can meet a throttled address, and it then gets 429 with retry-after.
A wrong secret on a cached prefix is a failure without a lookup: a prefix's digest never changes.

Database outage: a lookup waits at most `lookup_timeout_s`. One that times out or loses its connection
marks the database down (`crosslogic.storage.db_health`); meanwhile a key whose entry is cached
(however stale, up to `outage_grace_s`) keeps authenticating from the cache while a background lookup
per key watches for the database's return: no revocation can commit while the database is away from
us. An uncached key gets 503 within `outage_wait_s`. The first lookup that gets through marks it up.
The trade-off: a replica cut off from a database that others still reach (a partition) serves its
cached keys without hearing revocations for up to `outage_grace_s`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any, NoReturn
from uuid import UUID

import asyncpg

from crosslogic.auth.config import KeyAuthConfig
from crosslogic.auth.context import AuthContext
from crosslogic.auth.invalidation_listener import InvalidationListener
from crosslogic.auth.key_cache import KeyCache, KeyEntry
from crosslogic.auth.key_checks import INCORRECT, bearer_secret, check_key
from crosslogic.auth.key_lookup import KeyLookup
from crosslogic.auth.revocation import apply_notification
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle
from crosslogic.auth.usage_batcher import KeyUsageBatcher
from crosslogic.errors import AuthenticationError, ServiceUnavailableError
from crosslogic.storage.db_health import DatabaseHealth
from crosslogic.supervisor import LoopRestarts
from crosslogic.tenants import key_secrets

log = logging.getLogger(__name__)


class KeyAuthenticator:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_ttl_s: float = 30.0,
        offline_ttl_s: float = 1.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        max_negative_entries: int = 10_000,
        usage_flush_interval_s: float = 5.0,
        throttle: AuthThrottleConfig | None = None,
        config: KeyAuthConfig | None = None,
        db_health: DatabaseHealth | None = None,
        restarts: LoopRestarts | None = None,
    ) -> None:
        config = config or KeyAuthConfig()
        self._cache_ttl_s = cache_ttl_s
        self._offline_ttl_s = offline_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._outage_grace_s = config.outage_grace_s
        self.cache = KeyCache(max_entries=max_entries, max_negative_entries=max_negative_entries)
        self.throttle = FailedAuthThrottle(throttle)
        self.db = db_health or DatabaseHealth()
        self._lookup = KeyLookup(pool, self.cache, self.db, config)
        self.usage = KeyUsageBatcher(pool, flush_interval_s=usage_flush_interval_s, restarts=restarts)
        self.listener = InvalidationListener(
            pool,
            on_message=lambda message: apply_notification(self.cache, message),
            on_connected=self._on_listener_connected,
            # Entries cached before the listener was lost may have missed a NOTIFY.
            on_lost=self.cache.distrust_all,
            restarts=restarts,
        )
        self.hits = 0
        self.stale_hits = 0  # served from the cache while the database was away
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
        await self._lookup.close()
        await self.listener.close()
        try:
            await self.usage.close()
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            log.warning("final last_used_at flush failed", exc_info=True)

    # -- the hot path --------------------------------------------------------------------------

    async def authenticate(
        self,
        authorization: str | None,
        model: str | None,
        *,
        asgi_scope: Mapping[str, Any] | None = None,
    ) -> AuthContext:
        """Authenticate an `Authorization` header value; check `model` against the key's scopes.

        `asgi_scope` (the request's) says who is asking, for throttling failures; it is read only
        off the warm path. Raises AuthenticationError (401, invalid_api_key), RateLimitError (429,
        too_many_failed_auth) or PermissionDeniedError (403). Messages never contain any part of
        the presented secret.
        """
        secret = bearer_secret(authorization)
        prefix = key_secrets.lookup_prefix(secret)
        entry = self.cache.get(prefix)
        if entry is not None and self.cache.fresh(entry, self._ttl()) and key_secrets.verify(secret, entry.digest):  # type: ignore[arg-type]
            self.hits += 1
        elif entry is not None and self._usable_in_outage(entry) and key_secrets.verify(secret, entry.digest):  # type: ignore[arg-type]
            self.stale_hits += 1
            self._lookup.start(prefix)  # single flight: notices the database's return
        else:
            entry = await self._authenticate_cold(secret, prefix, entry, asgi_scope)
        context = check_key(entry, model)
        self.usage.touch(context.key_id)
        return context

    def _ttl(self) -> float:
        return self._cache_ttl_s if self.listener.connected else self._offline_ttl_s

    def _negative_ttl(self) -> float:
        return self._negative_ttl_s if self.listener.connected else self._offline_ttl_s

    def _usable_in_outage(self, entry: KeyEntry) -> bool:
        return self.db.down and time.monotonic() - entry.cached_at <= self._outage_grace_s

    # -- the cold path -------------------------------------------------------------------------

    async def _authenticate_cold(
        self,
        secret: str,
        prefix: str,
        cached: KeyEntry | None,
        asgi_scope: Mapping[str, Any] | None,
    ) -> KeyEntry:
        """A key not in the cache, a stale entry, or a wrong secret: the only path that can fail."""
        client = self.throttle.client_of(asgi_scope)
        digest = key_secrets.digest(secret)
        if cached is not None and not secrets.compare_digest(digest, cached.digest or b""):
            self.hits += 1
            self._fail(client, prefix)
        negative_at = self.cache.negative_at(prefix)
        if negative_at is not None and time.monotonic() - negative_at <= self._negative_ttl():
            self.hits += 1
            self._fail(client, prefix)
        proven = self.cache.proven(prefix)
        reserved = cached is None and (proven is None or not secrets.compare_digest(digest, proven))
        if reserved:
            self.throttle.reserve(client)  # the 429 comes here, before any lookup
        self.misses += 1
        try:
            entry = await self._lookup.load(prefix)
        except ServiceUnavailableError:
            if reserved:
                self.throttle.refund(client)
            if cached is not None and self._usable_in_outage(cached):
                self.stale_hits += 1  # its digest matched above: the database just went away
                return cached
            raise
        except BaseException:  # our failure (cancellation), not the caller's
            if reserved:
                self.throttle.refund(client)
            raise
        if entry.digest is None or not secrets.compare_digest(digest, entry.digest):
            self._fail(client, prefix, reserved=reserved)
        if reserved:
            self.throttle.refund(client)
        self.cache.remember_proven(prefix, entry.digest)
        return entry

    async def recheck(self, prefix: str) -> AuthContext:
        """A key that authenticated before (a batch's), checked again without its secret: the same
        cache, NOTIFY invalidation, lookup and checks as `authenticate`, so a revocation, expiry or
        suspension reaches it as fast as it reaches a request. Raises what a request would get."""
        entry = self.cache.get(prefix)
        if entry is None or not (self.cache.fresh(entry, self._ttl()) or self._usable_in_outage(entry)):
            try:
                entry = await self._lookup.load(prefix)
            except ServiceUnavailableError:
                if entry is None or not self._usable_in_outage(entry):
                    raise
        if entry.digest is None:
            raise AuthenticationError("This API key no longer exists.")
        return check_key(entry, None)

    def _fail(self, client: str, prefix: str, *, reserved: bool = False) -> NoReturn:
        self.throttle.fail(client, prefix, reserved=reserved)  # the 429 once a budget is spent
        raise AuthenticationError(INCORRECT)

    # -- invalidation --------------------------------------------------------------------------

    def _on_listener_connected(self) -> None:
        self.db.mark_up()
        self.cache.invalidate_all()

    def invalidate_all(self) -> None:
        self.cache.invalidate_all()

    def invalidate_key(self, prefix: str) -> None:
        self.cache.invalidate_key(prefix)

    def invalidate_tenant(self, tenant_id: UUID) -> None:
        self.cache.invalidate_tenant(tenant_id)

    # -- figures -------------------------------------------------------------------------------

    @property
    def lookups(self) -> int:
        """Queries sent to PostgreSQL."""
        return self._lookup.lookups

    @property
    def cached_keys(self) -> int:
        return self.cache.keys

    @property
    def cached_unknown_prefixes(self) -> int:
        return self.cache.unknown_prefixes
