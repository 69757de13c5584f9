"""In-memory rate limiter: the same semantics as the Redis backend, held in one process.

It is the state behind the in-cluster backend (one named Ray actor per cluster, see
`deployments/ratelimit_actor.py`) and the per-replica fallback while Redis is unreachable. Every public
method does all its work without awaiting, so on one event loop each call is atomic, as a Lua script is.

Memory follows live traffic, not history: log entries leave with the window, leases at settlement or
expiry, and a subject with neither is forgotten by the sweep (once per window). One subject's state is
bounded by `config.max_entries_per_subject`: the log must hold every request of the window to stay
exact at the window's edge, so instead of summarising it (which would make limits approximate) a
subject never holds more than that many requests in its window, nor leases; a limit above it, or none
on a windowed subject, acts as that ceiling. Both backends apply the same ceiling.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice

from crosslogic.errors import ConflictError
from crosslogic.ratelimit import status
from crosslogic.ratelimit.base import RateLimitConfig, RateLimiter
from crosslogic.ratelimit.models import (
    Admission,
    AdmissionRequest,
    BackendName,
    Limits,
    Rejection,
    Settlement,
    Subject,
    SubjectState,
    SubjectStatus,
)

SubjectId = tuple[str, str, str]


@dataclass(slots=True)
class _Entry:
    at: float
    tokens: int
    settled: bool = False


@dataclass
class _Window:
    # request id -> entry, in admission order (the clock is monotonic, so also in time order).
    log: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    tokens: int = 0
    # request id -> lease expiry.
    leases: dict[str, float] = field(default_factory=dict)
    # Lower bound of the earliest lease expiry: purging before it would find nothing.
    next_expiry: float = float("inf")

    def trim(self, now: float, window_s: float) -> None:
        cutoff = now - window_s
        while self.log:
            rid, entry = next(iter(self.log.items()))
            if entry.at > cutoff:
                break
            self.tokens -= entry.tokens
            del self.log[rid]

    def purge_leases(self, now: float) -> None:
        if now < self.next_expiry:
            return
        self.leases = {rid: exp for rid, exp in self.leases.items() if exp > now}
        self.next_expiry = min(self.leases.values(), default=float("inf"))

    def oldest_age(self, now: float) -> float | None:
        if not self.log:
            return None
        return now - next(iter(self.log.values())).at

    def tpm_retry(self, need: int, tpm: int, now: float, window_s: float) -> float:
        """Seconds until enough of the window expires for `need` more tokens to fit."""
        to_free = self.tokens + need - tpm
        freed = 0
        for entry in self.log.values():
            freed += entry.tokens
            if freed >= to_free:
                return entry.at + window_s - now
        return window_s

    @property
    def idle(self) -> bool:
        return not self.log and not self.leases


def ceilings(limits: Limits, max_entries: int) -> tuple[int | None, int]:
    """The RPM and concurrency actually enforced: the configured ones, capped by the per-subject
    memory bound (a windowed subject's log holds one entry per request in the window)."""
    rpm = limits.rpm
    if limits.windowed and (rpm is None or rpm > max_entries):
        rpm = max_entries
    concurrency = limits.max_concurrency
    return rpm, max_entries if concurrency is None else min(concurrency, max_entries)


class InMemoryRateLimiter(RateLimiter):
    backend_name = "memory"

    def __init__(
        self,
        config: RateLimitConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        backend_label: BackendName = "memory",
    ) -> None:
        self.config = config or RateLimitConfig()
        self._clock = clock
        self._label: BackendName = backend_label
        self._windows: dict[SubjectId, _Window] = {}
        self._next_sweep = 0.0

    async def admit(self, request: AdmissionRequest) -> Admission:
        return self.admit_now(request)

    def admit_now(self, request: AdmissionRequest) -> Admission:
        now = self._clock()
        self._sweep(now)
        subjects = request.subjects()
        windows = [self._window(s, now) for s in subjects]
        rid = request.request_id
        if any(rid in w.log or rid in w.leases for w in windows):
            raise ConflictError(f"Request id {rid!r} was already admitted.", param="request_id")

        rejected: Rejection | None = None
        for subject, window in zip(subjects, windows, strict=True):
            for candidate in self._violations(subject, window, request, now):
                rejected = status.worse(rejected, candidate)

        if rejected is None:
            expiry = now + request.lease_ttl_s
            for subject, window in zip(subjects, windows, strict=True):
                if subject.limits.windowed:
                    window.log[rid] = _Entry(at=now, tokens=request.reserved_tokens)
                    window.tokens += request.reserved_tokens
                window.leases[rid] = expiry
                window.next_expiry = min(window.next_expiry, expiry)

        return Admission(
            request_id=rid,
            tenant_id=request.tenant.tenant_id,
            key_id=request.key.id if request.key else None,
            admitted=rejected is None,
            reserved_tokens=request.reserved_tokens,
            lease_ttl_s=request.lease_ttl_s,
            backend=self._label,
            rejection=rejected,
            subjects=[self._status(s, w, now) for s, w in zip(subjects, windows, strict=True)],
            model=request.model,
            key_prefix=request.key_prefix,
        )

    def _violations(
        self, subject: Subject, window: _Window, request: AdmissionRequest, now: float
    ) -> list[Rejection]:
        limits, found = subject.limits, []
        window_s = self.config.window_s
        rpm, cap = ceilings(limits, self.config.max_entries_per_subject)
        if rpm is not None and len(window.log) + 1 > rpm:
            retry = None
            if rpm > 0:
                # The request whose expiry brings the count below the limit.
                blocking = next(islice(window.log.values(), len(window.log) - rpm, None))
                retry = blocking.at + window_s - now
            found.append(status.rejection(subject, "rpm", rpm, 1, retry))
        need = request.reserved_tokens
        if limits.tpm is not None and window.tokens + need > limits.tpm:
            retry = None if need > limits.tpm else window.tpm_retry(need, limits.tpm, now, window_s)
            found.append(status.rejection(subject, "tpm", limits.tpm, need, retry))
        if len(window.leases) + 1 > cap:
            earliest = min(window.leases.values(), default=None)
            retry = None if cap == 0 else status.concurrency_retry(
                None if earliest is None else earliest - now)
            found.append(status.rejection(subject, "concurrency", cap, 1, retry))
        return found

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        return self.settle_now(admission, actual_tokens)

    def settle_now(self, admission: Admission, actual_tokens: int) -> Settlement:
        rid = admission.request_id
        if not admission.admitted:
            return Settlement(request_id=rid)
        actual = max(0, actual_tokens)
        released = first = False
        tenant_leases: int | None = None
        for subject in admission.request_subjects():
            window = self._windows.get(_subject_id(subject))
            if window is None:
                continue
            if window.leases.pop(rid, None) is not None:
                released = first = True
            entry = window.log.get(rid)
            if entry is not None and not entry.settled:
                window.tokens += actual - entry.tokens
                entry.tokens, entry.settled, first = actual, True, True
            if subject.kind == "tenant":
                window.purge_leases(self._clock())
                tenant_leases = len(window.leases)
        refund = max(0, admission.reserved_tokens - actual) if first else 0
        return Settlement(request_id=rid, refunded_tokens=refund, lease_released=released,
                          tenant_active_leases=tenant_leases)

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        return self.extend_now(admission, lease_ttl_s)

    def extend_now(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        if not admission.admitted:
            return False
        now = self._clock()
        expiry = now + (lease_ttl_s or admission.lease_ttl_s)
        held = False
        for subject in admission.request_subjects():
            window = self._windows.get(_subject_id(subject))
            if window is None:
                continue
            window.purge_leases(now)
            if admission.request_id in window.leases:
                window.leases[admission.request_id] = expiry
                # A shorter TTL may move the earliest expiry forward.
                window.next_expiry = min(window.next_expiry, expiry)
                held = True
        return held

    async def state(self, subject: Subject) -> SubjectState:
        return self.state_now(subject)

    def state_now(self, subject: Subject) -> SubjectState:
        now = self._clock()
        window = self._windows.get(_subject_id(subject)) or _Window()
        window.trim(now, self.config.window_s)
        window.purge_leases(now)
        return status.subject_state(
            subject, requests=len(window.log), tokens=window.tokens,
            oldest_age_s=window.oldest_age(now), window_s=self.config.window_s,
            active_leases=len(window.leases), backend=self._label,
        )

    def _window(self, subject: Subject, now: float) -> _Window:
        window = self._windows.setdefault(_subject_id(subject), _Window())
        window.trim(now, self.config.window_s)
        window.purge_leases(now)
        return window

    def _status(self, subject: Subject, window: _Window, now: float) -> SubjectStatus:
        return status.subject_status(
            subject, requests=len(window.log), tokens=window.tokens,
            oldest_age_s=window.oldest_age(now), window_s=self.config.window_s,
            active_leases=len(window.leases),
        )

    @property
    def subjects(self) -> int:
        """Subjects with state held (for tests and operators: memory follows live traffic)."""
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        """Forget idle subjects once per window so memory follows live traffic, not history."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.config.window_s
        for sid in list(self._windows):
            window = self._windows[sid]
            window.trim(now, self.config.window_s)
            window.purge_leases(now)
            if window.idle:
                del self._windows[sid]


def _subject_id(subject: Subject) -> SubjectId:
    return (subject.tenant_id, subject.kind, subject.id)

