"""When the ingress may start a request's engine work while its rate-limit admission is still in flight.

Admission is a round trip to the limiter (Redis or the in-cluster actor: 1-3 ms on 2 cores, more under
load) and used to sit in front of the engine call, adding all of it to the first token. Most requests
are nowhere near their limits, so the ingress overlaps the two for them: the engine call starts at
once, and the first event is held until the admission's answer is in. A refused request is then
aborted before anything reaches the client (a 429, no usage, no lease), exactly as if it had waited.

What overlapping must not do is let a tenant over its limit push work onto the engines: each refusal
after an overlapped start costs the engine a queued (and perhaps prefilled) request. So a request
overlaps only when this replica's latest answer for each limited subject (key, tenant), less the
overlapped requests it has not heard back about, leaves clear room:

- RPM: at least `min_requests` requests left,
- TPM: room for this request's reservation twice over,
- concurrency: at least `min_slots` free slots,

and that answer is recent (`fresh_s`; other replicas and clusters spend the same quota). A subject with
no limits never stands in the way; a refusal forgets the subject's answer, so its next requests wait
for their admission until one comes back with room. Refusals after an overlapped start therefore take
other replicas' traffic racing this one's within `fresh_s`, which the margins absorb.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from crosslogic.ratelimit.models import Admission, AdmissionRequest, Limits, SubjectStatus

_SubjectKey = tuple[str, str]


@dataclass
class _Room:
    """What a subject had left after its latest admission on this replica."""

    at: float
    requests: int | None  # None: no RPM window reported
    tokens: int | None
    active_leases: int


@dataclass
class _InFlight:
    requests: int = 0
    tokens: int = 0


def _unlimited(limits: Limits) -> bool:
    return limits.rpm is None and limits.tpm is None and limits.max_concurrency is None


class Headroom:
    def __init__(
        self,
        *,
        fresh_s: float = 2.0,
        min_requests: int = 4,
        min_slots: int = 2,
        max_subjects: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fresh_s = fresh_s
        self.min_requests = min_requests
        self.min_slots = min_slots
        self._max_subjects = max_subjects
        self._clock = clock
        self._room: dict[_SubjectKey, _Room] = {}
        self._in_flight: dict[_SubjectKey, _InFlight] = {}

    def allows(self, request: AdmissionRequest) -> bool:
        """Whether `request` may start its engine work before its admission is decided."""
        now = self._clock()
        for subject in request.subjects():
            limits = subject.limits
            if _unlimited(limits):
                continue
            room = self._room.get((subject.kind, subject.id))
            if room is None or now - room.at > self.fresh_s:
                return False
            pending = self._in_flight.get((subject.kind, subject.id)) or _InFlight()
            if limits.rpm is not None and (
                room.requests is None or room.requests - pending.requests < self.min_requests
            ):
                return False
            if limits.tpm is not None and (
                room.tokens is None or room.tokens - pending.tokens < 2 * request.reserved_tokens
            ):
                return False
            if limits.max_concurrency is not None and (
                limits.max_concurrency - room.active_leases - pending.requests < self.min_slots
            ):
                return False
        return True

    def started(self, request: AdmissionRequest) -> None:
        """An overlapped admission is in flight: count it against the room until it is decided."""
        for subject in request.subjects():
            pending = self._in_flight.setdefault((subject.kind, subject.id), _InFlight())
            pending.requests += 1
            pending.tokens += request.reserved_tokens

    def decided(self, request: AdmissionRequest, admission: Admission | None, *, overlapped: bool) -> None:
        """Learn from an admission's answer (None: the limiter failed to answer)."""
        if overlapped:
            for subject in request.subjects():
                key = (subject.kind, subject.id)
                pending = self._in_flight.get(key)
                if pending is not None:
                    pending.requests -= 1
                    pending.tokens -= request.reserved_tokens
                    if pending.requests <= 0:
                        del self._in_flight[key]
        if admission is None or not admission.admitted:
            for subject in request.subjects():
                self._room.pop((subject.kind, subject.id), None)
            return
        now = self._clock()
        for status in admission.subjects:
            self._remember(status, now)

    def _remember(self, status: SubjectStatus, now: float) -> None:
        if len(self._room) >= self._max_subjects:
            self._forget_stale(now)
        self._room[(status.kind, status.id)] = _Room(
            at=now,
            requests=status.requests.remaining if status.requests is not None else None,
            tokens=status.tokens.remaining if status.tokens is not None else None,
            active_leases=status.active_leases,
        )

    def _forget_stale(self, now: float) -> None:
        stale = [key for key, room in self._room.items() if now - room.at > self.fresh_s]
        for key in stale:
            del self._room[key]
        if len(self._room) >= self._max_subjects:  # all fresh: a flood of distinct subjects
            self._room.clear()
