"""Redis backend: shared by every replica and cluster. One Lua script (EVALSHA) per admission, one per
settlement; the Redis server's clock (TIME) decides, never a replica's.

All keys of one admission carry the tenant's hash tag, so on Redis Cluster the key's and the tenant's
state live in the same slot and one script can update both atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from crosslogic.errors import ConflictError
from crosslogic.ratelimit import redis_scripts, status
from crosslogic.ratelimit.base import RateLimitBackendError, RateLimitConfig, RateLimiter
from crosslogic.ratelimit.models import (
    Admission,
    AdmissionRequest,
    LimitName,
    Rejection,
    Settlement,
    Subject,
    SubjectState,
)

_LIMIT_CODES: dict[int, LimitName] = {1: "rpm", 2: "tpm", 3: "concurrency"}
_SAFE_TAG = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,100}$")
# Errors that mean "Redis is not there right now"; anything else (a script error) is a bug and raises.
_OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_US = 1_000_000
# Redis runs scripts one at a time, so more connections than this add sockets, not throughput.
MAX_CONNECTIONS = 64


def hash_tag(tenant_id: str) -> str:
    """Redis Cluster hashes only the text between the first `{` and `}`; odd ids are digested."""
    if _SAFE_TAG.match(tenant_id):
        return tenant_id
    return "h-" + hashlib.sha256(tenant_id.encode()).hexdigest()[:32]


def subject_keys(namespace: str, subject: Subject) -> list[str]:
    base = f"{namespace}:{{{hash_tag(subject.tenant_id)}}}:{subject.kind}:{subject.id}"
    return [f"{base}:log", f"{base}:tok", f"{base}:lease"]


def _limit_arg(value: int | None) -> int:
    return -1 if value is None else value


class RedisRateLimiter(RateLimiter):
    backend_name = "redis"

    def __init__(self, client: aioredis.Redis, config: RateLimitConfig | None = None) -> None:
        self.config = config or RateLimitConfig()
        self._client = client
        self._admit = client.register_script(redis_scripts.ADMIT)
        self._settle = client.register_script(redis_scripts.SETTLE)
        self._extend = client.register_script(redis_scripts.EXTEND)
        self._state = client.register_script(redis_scripts.STATE)

    @classmethod
    def from_url(cls, url: str, config: RateLimitConfig | None = None) -> RedisRateLimiter:
        """A client with tight timeouts and no retries: a slow Redis must fail fast, not queue.

        The pool is bounded and blocking: a burst of admissions waits (within the timeout) for one
        of a few warm connections instead of opening hundreds of sockets at once, which on a busy
        machine is what makes connects time out.
        """
        config = config or RateLimitConfig()
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=config.redis_timeout_s,
            socket_timeout=config.redis_timeout_s,
            socket_connect_timeout=config.redis_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        return cls(aioredis.Redis.from_pool(pool), config)

    async def load_scripts(self) -> None:
        """Register the scripts up front (at start-up) so the first admissions pay no SCRIPT LOAD."""
        for script in (self._admit, self._settle, self._extend, self._state):
            script.sha = await self._call(self._client.script_load(script.script))

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=self.config.redis_timeout_s)
        except _OUTAGE_ERRORS as exc:
            raise RateLimitBackendError(f"redis: {type(exc).__name__}: {exc}") from exc

    def _keys(self, subjects: Sequence[Subject]) -> list[str]:
        return [k for s in subjects for k in subject_keys(self.config.namespace, s)]

    async def admit(self, request: AdmissionRequest) -> Admission:
        subjects = request.subjects()
        window_us = round(self.config.window_s * _US)
        args: list[int | str] = [
            window_us, request.request_id, str(request.reserved_tokens),
            round(request.lease_ttl_s * _US), round(status.CONCURRENCY_RETRY_CAP_S * _US),
        ]
        for s in subjects:
            limits = s.limits
            args += [_limit_arg(limits.rpm), _limit_arg(limits.tpm), _limit_arg(limits.max_concurrency)]
        args.append(self.config.max_entries_per_subject)
        raw = await self._call(self._admit(keys=self._keys(subjects), args=args))
        code = int(raw[0])
        if code == -1:
            raise ConflictError(
                f"Request id {request.request_id!r} was already admitted.", param="request_id")
        rejected: Rejection | None = None
        if code == 0:
            subject = subjects[int(raw[1]) - 1]
            retry_us = int(raw[4])
            rejected = status.rejection(
                subject, _LIMIT_CODES[int(raw[2])], int(raw[3]),
                request.reserved_tokens if int(raw[2]) == 2 else 1,
                None if retry_us == -1 else retry_us / _US,
            )
        statuses = []
        for i, s in enumerate(subjects):
            count, tokens, oldest_us, active = (int(v) for v in raw[5 + 4 * i: 9 + 4 * i])
            statuses.append(status.subject_status(
                s, requests=count, tokens=tokens,
                oldest_age_s=None if oldest_us < 0 else oldest_us / _US,
                window_s=self.config.window_s, active_leases=active,
            ))
        return Admission(
            request_id=request.request_id,
            tenant_id=request.tenant.tenant_id,
            key_id=request.key.id if request.key else None,
            admitted=code == 1,
            reserved_tokens=request.reserved_tokens,
            lease_ttl_s=request.lease_ttl_s,
            backend="redis",
            rejection=rejected,
            subjects=statuses,
            model=request.model,
            key_prefix=request.key_prefix,
        )

    async def settle(self, admission: Admission, actual_tokens: int) -> Settlement:
        if not admission.admitted:
            return Settlement(request_id=admission.request_id)
        actual = max(0, actual_tokens)
        keys = self._keys(admission.request_subjects())
        released, first, active = await self._call(
            self._settle(keys=keys, args=[admission.request_id, str(actual)]))
        return Settlement(
            request_id=admission.request_id,
            refunded_tokens=max(0, admission.reserved_tokens - actual) if int(first) else 0,
            lease_released=bool(int(released)),
            tenant_active_leases=int(active),
        )

    async def extend(self, admission: Admission, lease_ttl_s: float | None = None) -> bool:
        if not admission.admitted:
            return False
        ttl_us = round((lease_ttl_s or admission.lease_ttl_s) * _US)
        keys = self._keys(admission.request_subjects())
        held = await self._call(self._extend(keys=keys, args=[admission.request_id, ttl_us]))
        return bool(int(held))

    async def state(self, subject: Subject) -> SubjectState:
        window_s = self.config.window_s
        raw = await self._call(
            self._state(keys=self._keys([subject]), args=[round(window_s * _US)]))
        count, tokens, oldest_us, active = (int(v) for v in raw)
        return status.subject_state(
            subject, requests=count, tokens=tokens,
            oldest_age_s=None if oldest_us < 0 else oldest_us / _US,
            window_s=window_s, active_leases=active, backend="redis",
        )
