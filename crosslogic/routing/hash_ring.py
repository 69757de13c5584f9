"""Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018).

A key's home is the first replica clockwise from the key's point on a ring of virtual nodes; every
ingress replica builds the same ring from the same replica ids, so they agree on homes without
talking to each other, and a replica joining or leaving moves only the keys next to it. The bound:
a replica already holding `capacity(total, n, epsilon)` requests is passed over for the next one on
the ring, so a hot key spills to its ring successors (which then build that key's cache) instead of
queueing on one replica: no replica holds more than (1 + epsilon) times the mean, rounded up (or
two requests, near idle).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator

# Virtual nodes per replica come 8 at a time from one 64-byte digest (cheap ring builds at 256+
# replicas: a ring is rebuilt whenever the replica set changes).
_POINTS_PER_DIGEST = 8


# A replica may always hold this many, whatever the mean. Near idle the mean is below one request and
# a bound of ceil((1 + epsilon) * mean) = 1 turned a home away while it still counted the previous
# request of the same conversation (engines report every 0.5 s; a finished request is counted until
# then): affinity was lost exactly when it costs nothing to keep (seen on three simulator replicas
# behind the real request router).
MIN_CAPACITY = 2


def capacity(total: int, replicas: int, epsilon: float) -> int:
    """Most requests a replica may hold before taking one more: ceil((1 + epsilon) * mean), where
    the mean counts the request being placed, and never below MIN_CAPACITY."""
    if replicas <= 0:
        return 0
    return max(MIN_CAPACITY, math.ceil((1.0 + epsilon) * (total + 1) / replicas))


class HashRing:
    def __init__(self, replicas: Iterable[str], vnodes: int = 64) -> None:
        members = sorted(set(replicas))
        points: list[tuple[int, str]] = []
        digests = max(1, math.ceil(vnodes / _POINTS_PER_DIGEST))
        for rid in members:
            for d in range(digests):
                raw = hashlib.blake2b(f"{rid}#{d}".encode(), digest_size=64).digest()
                points.extend((int.from_bytes(raw[i:i + 8], "little"), rid) for i in range(0, 64, 8))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [r for _, r in points]
        self.members = frozenset(members)

    def walk(self, key: int) -> Iterator[str]:
        """Every replica once, in ring order from `key`'s point."""
        count = len(self._points)
        if count == 0:
            return
        start = bisect.bisect_left(self._points, key)
        seen: set[str] = set()
        wanted = len(self.members)
        for i in range(count):
            rid = self._owners[(start + i) % count]
            if rid not in seen:
                seen.add(rid)
                yield rid
                if len(seen) == wanted:
                    return

    def first(self, key: int, accepts: Callable[[str], bool]) -> str | None:
        """The first replica from `key` clockwise that `accepts` (None if none does)."""
        for rid in self.walk(key):
            if accepts(rid):
                return rid
        return None
