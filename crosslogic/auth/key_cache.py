"""The key authenticator's in-process cache (crosslogic/auth/key_authenticator.py).

Three tables, each bounded: entries of keys that exist, by lookup prefix; a separate negative cache of
prefixes that match no key (so a flood of random keys can never evict the entries of real keys); and
the digests that authenticated on this replica before (`proven`, kept across invalidations, LRU), so
a key this replica has seen is never throttled.

A generation counter, bumped by every invalidation, stops a lookup that raced with one from
re-caching stale data. Entries cached before the invalidation listener was lost may have missed a
NOTIFY: `distrust_all` makes them never fresh again, yet keeps them as the fallback while the
database is away.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

from crosslogic.auth.context import AuthContext


@dataclass(frozen=True)
class KeyEntry:
    """A cached lookup. `digest is None` records that no key has this prefix (negative entry)."""

    digest: bytes | None
    context: AuthContext | None
    revoked: bool
    expires_at: float | None  # wall-clock seconds
    tenant_active: bool
    cached_at: float  # monotonic seconds
    tenant_id: UUID | None
    billing_hold: bool = False


class KeyCache:
    def __init__(self, *, max_entries: int = 100_000, max_negative_entries: int = 10_000) -> None:
        self._max_entries = max_entries
        self._max_negative_entries = max_negative_entries
        self._entries: dict[str, KeyEntry] = {}  # keys that exist
        self._negative: OrderedDict[str, float] = OrderedDict()  # prefix -> cached_at, no such key
        self._proven: OrderedDict[str, bytes] = OrderedDict()  # prefix -> digest that authenticated
        self._by_tenant: dict[UUID, set[str]] = {}
        self.generation = 0
        self._distrusted_before = float("-inf")

    # -- reading ---------------------------------------------------------------------------------

    def get(self, prefix: str) -> KeyEntry | None:
        return self._entries.get(prefix)

    def negative_at(self, prefix: str) -> float | None:
        """When `prefix` was found to match no key (monotonic), if that is cached."""
        return self._negative.get(prefix)

    def proven(self, prefix: str) -> bytes | None:
        return self._proven.get(prefix)

    def fresh(self, entry: KeyEntry, ttl_s: float) -> bool:
        return entry.cached_at > self._distrusted_before and time.monotonic() - entry.cached_at <= ttl_s

    @property
    def keys(self) -> int:
        return len(self._entries)

    @property
    def unknown_prefixes(self) -> int:
        return len(self._negative)

    # -- writing ---------------------------------------------------------------------------------

    def store(self, prefix: str, entry: KeyEntry) -> None:
        self.drop(prefix)
        if entry.digest is None:
            self._negative[prefix] = entry.cached_at
            while len(self._negative) > self._max_negative_entries:
                self._negative.popitem(last=False)  # oldest first; never a real key's entry
            return
        while len(self._entries) >= self._max_entries:
            self.drop(next(iter(self._entries)))  # oldest insertion first
        self._entries[prefix] = entry
        if entry.tenant_id is not None:
            self._by_tenant.setdefault(entry.tenant_id, set()).add(prefix)

    def remember_proven(self, prefix: str, digest: bytes) -> None:
        self._proven.pop(prefix, None)
        self._proven[prefix] = digest
        if len(self._proven) > self._max_entries:
            self._proven.popitem(last=False)

    def drop(self, prefix: str) -> None:
        self._negative.pop(prefix, None)
        entry = self._entries.pop(prefix, None)
        if entry is not None and entry.tenant_id is not None:
            prefixes = self._by_tenant.get(entry.tenant_id)
            if prefixes is not None:
                prefixes.discard(prefix)
                if not prefixes:
                    del self._by_tenant[entry.tenant_id]

    # -- invalidation ----------------------------------------------------------------------------

    def distrust_all(self) -> None:
        """Notifications may be missed from now on: nothing cached is fresh (each key is looked up
        again), yet every entry stays as the fallback if the database is away."""
        self.generation += 1
        self._distrusted_before = time.monotonic()
        self._negative.clear()

    def invalidate_all(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._negative.clear()
        self._by_tenant.clear()

    def invalidate_key(self, prefix: str) -> None:
        self.generation += 1
        self.drop(prefix)

    def invalidate_tenant(self, tenant_id: UUID) -> None:
        self.generation += 1
        for prefix in list(self._by_tenant.get(tenant_id, ())):
            self.drop(prefix)
