"""API-key lookups in PostgreSQL for the key authenticator: one indexed query by lookup prefix,
single flight per prefix, waited on with a timeout (`KeyAuthConfig`).

A lookup that times out or loses its connection marks the database down
(`crosslogic.storage.db_health`); while it is down, callers wait only `outage_wait_s`. Neither a
caller's timeout nor its cancellation (client gone) cancels the shared lookup: it finishes in the
background and caches its answer for the next request. The first lookup that gets through marks the
database up.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from crosslogic.auth.config import KeyAuthConfig
from crosslogic.auth.context import AuthContext
from crosslogic.auth.key_cache import KeyCache, KeyEntry
from crosslogic.errors import ServiceUnavailableError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.db_health import DatabaseHealth
from crosslogic.tenants.api_key_repository import find_key_for_auth
from crosslogic.tenants.models import KeyAuthRecord


class KeyLookup:
    def __init__(self, pool: asyncpg.Pool, cache: KeyCache, db: DatabaseHealth, config: KeyAuthConfig) -> None:
        self._pool = pool
        self._cache = cache
        self._db = db
        self._lookup_timeout_s = config.lookup_timeout_s
        self._outage_wait_s = config.outage_wait_s
        self._inflight: dict[str, asyncio.Task[KeyEntry]] = {}
        self.lookups = 0  # queries sent to PostgreSQL

    async def load(self, prefix: str) -> KeyEntry:
        """The key's entry from PostgreSQL, waiting at most the lookup timeout (less while it is down)."""
        task = self.start(prefix)
        wait_s = self._outage_wait_s if self._db.down else self._lookup_timeout_s
        # asyncio.wait, not wait_for: neither our timeout nor our cancellation (client gone) cancels
        # the shared lookup; it finishes in the background and caches its answer for the next request.
        await asyncio.wait([task], timeout=wait_s)
        if not task.done():
            self._db.mark_down(f"key lookup unanswered after {wait_s:g}s")
            raise ServiceUnavailableError(
                "The API key could not be checked: the database is unavailable; retry shortly."
            )
        return task.result()

    def start(self, prefix: str) -> asyncio.Task[KeyEntry]:
        """The lookup of `prefix`, started unless one is in flight. Single flight: a burst of requests
        with one uncached key costs one query."""
        task = self._inflight.get(prefix)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._query(prefix), name="crosslogic-key-lookup")
            self._inflight[prefix] = task
            task.add_done_callback(lambda t: self._done(prefix, t))
        return task

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def _done(self, prefix: str, task: asyncio.Task[KeyEntry]) -> None:
        if self._inflight.get(prefix) is task:
            del self._inflight[prefix]
        if not task.cancelled():
            task.exception()  # retrieved: waiters re-raise it, nobody else must log it

    async def _query(self, prefix: str) -> KeyEntry:
        generation = self._cache.generation
        self.lookups += 1
        try:
            with translate_db_errors():
                record = await find_key_for_auth(self._pool, prefix)
        except ServiceUnavailableError as exc:
            self._db.mark_down(str(exc.__cause__ or exc))
            raise
        self._db.mark_up()
        entry = entry_from(record)
        if generation == self._cache.generation:  # no invalidation raced with us
            self._cache.store(prefix, entry)
        return entry


def entry_from(record: KeyAuthRecord | None) -> KeyEntry:
    now = time.monotonic()
    if record is None:
        return KeyEntry(None, None, False, None, False, now, None)
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
        preferred_region=key.preferred_region or tenant.preferred_region,
        fair_weight=tenant.weight,
    )
    return KeyEntry(
        digest=bytes(record.secret_digest),
        context=context,
        revoked=key.revoked_at is not None,
        expires_at=key.expires_at.timestamp() if key.expires_at is not None else None,
        tenant_active=tenant.status == "active",
        cached_at=now,
        tenant_id=tenant.id,
        billing_hold=record.suspended_for_billing,
    )
