"""Building result models from raw window figures; shared by both backends so they answer alike."""

from __future__ import annotations

import math
import time

from crosslogic.ratelimit.models import (
    BackendName,
    LimitName,
    Limits,
    Rejection,
    Subject,
    SubjectState,
    SubjectStatus,
    WindowStatus,
)

# A full concurrency slot frees when some request settles, which no clock predicts; the earliest lease
# expiry is only an upper bound, so clients are told to retry within this many seconds at most.
CONCURRENCY_RETRY_CAP_S = 1.0


def subject_status(
    subject: Subject, *, requests: int, tokens: int, oldest_age_s: float | None,
    window_s: float, active_leases: int,
) -> SubjectStatus:
    """`oldest_age_s` is how long ago the oldest request still in the window was admitted."""
    reset_s = 0.0 if oldest_age_s is None else max(0.0, window_s - oldest_age_s)
    limits = subject.limits
    return SubjectStatus(
        kind=subject.kind,
        id=subject.id,
        limits=limits,
        requests=None if limits.rpm is None else WindowStatus(
            limit=limits.rpm, remaining=max(0, limits.rpm - requests), reset_s=reset_s),
        tokens=None if limits.tpm is None else WindowStatus(
            limit=limits.tpm, remaining=max(0, limits.tpm - tokens), reset_s=reset_s),
        active_leases=active_leases,
    )


def rejection(
    subject: Subject, limit: LimitName, value: int, requested: int, retry_after_s: float | None
) -> Rejection:
    if retry_after_s is not None:
        retry_after_s = max(0.0, retry_after_s)
    return Rejection(
        subject_kind=subject.kind,
        subject_id=subject.id,
        limit=limit,
        value=value,
        requested=requested,
        retry_after_s=retry_after_s,
        reset_at=None if retry_after_s is None else time.time() + retry_after_s,
    )


def worse(current: Rejection | None, candidate: Rejection) -> Rejection:
    """Of two failed limits report the one that binds longest: retrying earlier would fail again."""
    if current is None:
        return candidate
    return candidate if _wait(candidate) > _wait(current) else current


def _wait(r: Rejection) -> float:
    return math.inf if r.retry_after_s is None else r.retry_after_s


def concurrency_retry(earliest_expiry_in_s: float | None) -> float:
    if earliest_expiry_in_s is None:
        return CONCURRENCY_RETRY_CAP_S
    return min(CONCURRENCY_RETRY_CAP_S, max(0.0, earliest_expiry_in_s))


def limit_value(limits: Limits, limit: LimitName) -> int | None:
    if limit == "rpm":
        return limits.rpm
    if limit == "tpm":
        return limits.tpm
    return limits.max_concurrency


def subject_state(
    subject: Subject, *, requests: int, tokens: int, oldest_age_s: float | None,
    window_s: float, active_leases: int, backend: BackendName,
) -> SubjectState:
    st = subject_status(subject, requests=requests, tokens=tokens, oldest_age_s=oldest_age_s,
                        window_s=window_s, active_leases=active_leases)
    return SubjectState(
        kind=subject.kind, id=subject.id, tenant_id=subject.tenant_id, limits=subject.limits,
        window_s=window_s, requests_in_window=requests, tokens_in_window=tokens,
        remaining_requests=st.requests.remaining if st.requests else None,
        remaining_tokens=st.tokens.remaining if st.tokens else None,
        reset_s=0.0 if oldest_age_s is None else max(0.0, window_s - oldest_age_s),
        active_leases=active_leases, backend=backend,
    )
