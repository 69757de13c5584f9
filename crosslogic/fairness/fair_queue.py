"""A model's admission queue in front of its engines: weighted fair across tenants, FIFO within one.

While the model's requests in flight (this ingress's own plus what `external()` says others send)
are below `capacity()`, a request takes a slot at once. Past it, requests wait and are released as
slots free, in virtual finish time order (weighted fair queuing, start-time variant): a tenant's
request is tagged `max(virtual time, the tenant's last tag) + 1 / weight`, the smallest head tag
goes first, and the virtual time advances to the tag released. So a tenant with weight 2 gets two
slots to another's one while both wait; a tenant that floods only pushes its own tags ahead, and one
that arrives later starts at the current virtual time (no credit for idling; no starvation: every
tag is finite and the virtual time passes it).

Headroom (`burst`): ordering alone still makes a light tenant wait for the flood's next slot to
free (a whole generation, when lengths are alike). A tenant whose demand (in flight + waiting) is
within its weighted share of `capacity` (among tenants with requests in flight or waiting) may
also take one of `burst` slots beyond it, at once: the capacity is set below what engines batch,
so that runs at once too.

Waiting is bounded (`max_wait_s`, `max_waiting`): then a 503 with retry-after. A cancelled waiter
(client gone) leaves the queue; one cancelled just as it was granted gives its slot back.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from crosslogic.errors import ServiceUnavailableError

# How often waiters re-check when slots are held elsewhere (other ingress replicas, via the
# router's view): their releases are not events here.
RECHECK_S = 0.05


class QueueFullError(ServiceUnavailableError):
    default_code = "engine_queue_full"
    # Not retried by the relay on another replica: the queue is the model's, the client retries
    # after retry-after.
    retryable = False


class _Waiter:
    __slots__ = ("future", "tag")

    def __init__(self, tag: float, future: asyncio.Future[None]) -> None:
        self.tag = tag
        self.future = future


class _Tenant:
    __slots__ = ("in_flight", "last_tag", "waiters", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.in_flight = 0
        self.last_tag = 0.0
        self.waiters: deque[_Waiter] = deque()


class Slot:
    """One request's place in flight; `release()` once (idempotent) when its engine call ends."""

    __slots__ = ("_queue", "_tenant", "released", "waited_s")

    def __init__(self, queue: FairQueue, tenant: str, waited_s: float) -> None:
        self._queue = queue
        self._tenant = tenant
        self.released = False
        self.waited_s = waited_s

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._queue._release(self._tenant)


class FairQueue:
    def __init__(
        self,
        capacity: Callable[[], int],
        *,
        external: Callable[[], int] = lambda: 0,
        burst: int = 0,
        max_wait_s: float = 30.0,
        max_waiting: int = 4096,
    ) -> None:
        self._capacity = capacity
        self._external = external
        self.burst = burst
        self.max_wait_s = max_wait_s
        self.max_waiting = max_waiting
        self.in_flight = 0
        self.waiting = 0
        self._virtual = 0.0
        self._tenants: dict[str, _Tenant] = {}

    def tenant_in_flight(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.in_flight if state is not None else 0

    # -- admission -------------------------------------------------------------------------------

    def _used(self) -> int:
        return self.in_flight + self._external()

    def _light(self, state: _Tenant, capacity: int, demand: int) -> bool:
        """The tenant's demand (in flight + waiting, this request included) is within its weighted
        share: headroom is for such tenants only. A backlogged tenant is served in tag order; were
        it to take headroom whenever it dipped below its share, weights would blur (README, "Why
        the defaults")."""
        total = sum(t.weight for t in self._tenants.values())
        return demand <= capacity * state.weight / total

    def _may_burst(self, state: _Tenant, used: int, capacity: int, demand: int) -> bool:
        return self.burst > 0 and used < capacity + self.burst and self._light(state, capacity, demand)

    async def acquire(self, tenant: str, weight: float = 1.0) -> Slot:
        loop = asyncio.get_running_loop()
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(weight)
        state.weight = weight
        if not state.waiters:
            used, capacity = self._used(), self._capacity()
            demand = state.in_flight + 1
            if (not self.waiting and used < capacity) or self._may_burst(state, used, capacity, demand):
                self._grant(state)
                return Slot(self, tenant, 0.0)
        if self.waiting >= self.max_waiting:
            self._drop_if_idle(tenant)
            raise QueueFullError(
                "The model's engines are saturated; retry shortly.", headers={"retry-after": "1"})
        state.last_tag = max(self._virtual, state.last_tag) + 1.0 / weight
        waiter = _Waiter(state.last_tag, loop.create_future())
        state.waiters.append(waiter)
        self.waiting += 1
        started = loop.time()
        deadline = started + self.max_wait_s
        try:
            while True:
                self._dispatch()
                if waiter.future.done():
                    break
                left = deadline - loop.time()
                if left <= 0:
                    raise QueueFullError(
                        f"The model's engines stayed saturated for {self.max_wait_s:g} s; retry shortly.",
                        headers={"retry-after": str(max(1, math.ceil(self.max_wait_s / 10)))})
                # Woken by a release here, or after RECHECK_S to look at slots held elsewhere.
                # (asyncio.wait, not wait_for: 3.11's wait_for swallows a cancellation that comes
                # as the future completes, and a client gone would keep its slot.)
                await asyncio.wait((waiter.future,), timeout=min(left, RECHECK_S))
        except BaseException:
            if waiter.future.done():
                self._release(tenant)  # granted as we were cancelled: the slot goes to the next in line
            else:
                waiter.future.cancel()
                state.waiters.remove(waiter)
                self.waiting -= 1
                self._drop_if_idle(tenant)
                self._dispatch()  # the heads changed
            raise
        return Slot(self, tenant, loop.time() - started)

    def _grant(self, state: _Tenant) -> None:
        state.in_flight += 1
        self.in_flight += 1

    def _release(self, tenant: str) -> None:
        self.in_flight -= 1
        state = self._tenants[tenant]
        state.in_flight -= 1
        self._drop_if_idle(tenant)
        self._dispatch()

    def _drop_if_idle(self, tenant: str) -> None:
        """A tenant with nothing in flight or waiting has no share and keeps no state (a returning
        tenant starts at the virtual time anyway)."""
        state = self._tenants.get(tenant)
        if state is not None and not state.in_flight and not state.waiters:
            del self._tenants[tenant]

    def _pop(self, state: _Tenant) -> None:
        waiter = state.waiters.popleft()
        self.waiting -= 1
        self._virtual = max(self._virtual, waiter.tag)
        self._grant(state)
        waiter.future.set_result(None)

    def _dispatch(self) -> None:
        if not self.waiting:
            return
        capacity = self._capacity()
        used = self._used()
        while self.waiting and used < capacity:
            head = min((t for t in self._tenants.values() if t.waiters), key=lambda t: t.waiters[0].tag)
            self._pop(head)
            used += 1
        if self.waiting and self.burst:
            for state in sorted((t for t in self._tenants.values() if t.waiters), key=lambda t: t.waiters[0].tag):
                while state.waiters and self._may_burst(
                        state, used, capacity, state.in_flight + len(state.waiters)):
                    self._pop(state)
                    used += 1
