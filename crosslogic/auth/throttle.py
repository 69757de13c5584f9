"""Throttling of failed authentication: per client address and per API-key lookup prefix.

A failure is cheap for the caller but costs us a PostgreSQL lookup (an unknown `sk-cl-` prefix) or an
audit row (a bad admin token). Each client address and each key prefix gets a failure budget: a
generic cell rate (GCRA): `failures` per `window_s`, all of it usable in a burst, refilled evenly
(one failure every window_s / failures seconds). A caller over budget gets 429 with retry-after
(the time until one more failure fits) before anything touches the database; throttled attempts do
not spend budget, so a client that honours retry-after gets back in after seconds, not a window.

What is never throttled: an attempt that proves its secret without the database (a cached key, or a
key this replica has seen authenticate) — see `KeyAuthenticator` — so failures from other addresses,
or a flood of wrong secrets on a legitimate key's prefix, cannot lock its owner out.

State is in-process, per ingress replica, bounded (LRU, `max_entries` per table) and self-expiring
(a cell whose budget has refilled is dropped on the next sweep). That suffices because what it
protects is per replica too: each replica's database lookups. N replicas let an attacker N budgets,
and HAProxy spreads one client over all of them, so the bound is N times `failures` per window; no
shared store (and no extra round trip on the failure path) is needed for that.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crosslogic.auth.client_address import ClientAddressConfig
from crosslogic.errors import RateLimitError

THROTTLED_CODE = "too_many_failed_auth"


class FailureBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=20, ge=1, le=1_000_000)
    window_s: float = Field(default=60.0, gt=0, le=86_400)


class AuthThrottleConfig(BaseModel):
    """`auth_throttle` in the app config (serve_config.yaml args)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    per_address: FailureBudget = Field(default_factory=FailureBudget)
    # Counts only wrong secrets on a prefix (from any address); the right secret always passes.
    per_prefix: FailureBudget = Field(default_factory=FailureBudget)
    # Cells kept per table (addresses, prefixes): ~150 bytes each.
    max_entries: int = Field(default=100_000, ge=16, le=10_000_000)
    client_address: ClientAddressConfig = Field(default_factory=ClientAddressConfig)


class _Cells:
    """GCRA cells by key: the time at which the key's spent budget is fully refilled."""

    def __init__(self, budget: FailureBudget, max_entries: int) -> None:
        self._interval = budget.window_s / budget.failures
        self._window = budget.window_s
        self._max_entries = max_entries
        self._tat: OrderedDict[str, float] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float | None:
        """Seconds until `key` may fail once more, or None when it may fail now."""
        tat = self._tat.get(key)
        if tat is None:
            return None
        wait = tat + self._interval - self._window - now
        return wait if wait > 1e-6 else None  # float sums of the interval must not cost a failure

    def spend(self, key: str, now: float) -> None:
        tat = max(self._tat.pop(key, now), now) + self._interval
        self._tat[key] = tat  # most recently failing last: evicted last
        if len(self._tat) > self._max_entries:
            self._sweep(now)

    def refund(self, key: str, now: float) -> None:
        tat = self._tat.get(key)
        if tat is not None:
            tat -= self._interval
            if tat > now:
                self._tat[key] = tat
            else:
                del self._tat[key]

    def _sweep(self, now: float) -> None:
        for key in [k for k, tat in self._tat.items() if tat <= now]:
            del self._tat[key]  # fully refilled: same as absent
        while len(self._tat) > self._max_entries:
            self._tat.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tat)


class FailedAuthThrottle:
    def __init__(self, config: AuthThrottleConfig | None = None) -> None:
        self.config = config or AuthThrottleConfig()
        self._addresses = _Cells(self.config.per_address, self.config.max_entries)
        self._prefixes = _Cells(self.config.per_prefix, self.config.max_entries)
        self.throttled = 0

    def client_of(self, asgi_scope: Mapping[str, Any] | None) -> str:
        return self.config.client_address.of_scope(asgi_scope)

    def reserve(self, client: str) -> None:
        """Before a lookup that may fail: spend one of `client`'s failures now, or raise the 429.

        Spent ahead so that concurrent lookups cannot overrun the budget while they wait on the
        database; `refund` it when the lookup succeeds (or never finished).
        """
        if not self.config.enabled:
            return
        now = time.monotonic()
        wait = self._addresses.retry_after(client, now)
        if wait is not None:
            raise self._refusal(wait, "this address")
        self._addresses.spend(client, now)

    def refund(self, client: str) -> None:
        if self.config.enabled:
            self._addresses.refund(client, time.monotonic())

    def fail(self, client: str, prefix: str | None = None, *, reserved: bool = False) -> None:
        """Spend budget for one failure; raise the 429 instead when a budget was already spent.

        `reserved`: the address's share was spent by `reserve` (that attempt was let through).
        """
        if not self.config.enabled:
            return
        now = time.monotonic()
        waits = [None if reserved else self._addresses.retry_after(client, now)]
        if prefix is not None:
            waits.append(self._prefixes.retry_after(prefix, now))
        refused = [w for w in waits if w is not None]
        if refused:
            raise self._refusal(max(refused), "this address" if waits[0] else "this API key prefix")
        if not reserved:
            self._addresses.spend(client, now)
        if prefix is not None:
            self._prefixes.spend(prefix, now)

    @property
    def tracked(self) -> tuple[int, int]:
        """(addresses, prefixes) currently held."""
        return len(self._addresses), len(self._prefixes)

    def _refusal(self, wait_s: float, what: str) -> RateLimitError:
        self.throttled += 1
        retry_ms = max(1, math.ceil(wait_s * 1000))
        return RateLimitError(
            f"Too many failed authentication attempts from {what}; retry after "
            f"{retry_ms / 1000:.1f} s.",
            code=THROTTLED_CODE,
            headers={"retry-after": str(math.ceil(retry_ms / 1000)), "retry-after-ms": str(retry_ms)},
        )
