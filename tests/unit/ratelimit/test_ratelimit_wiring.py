"""Redis Cluster key layout, telemetry hooks, the operator view and the fail-open local share."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot
from rl_support import RecordingMetrics, SubjectsFactory, admit

from crosslogic.auth.context import AuthContext
from crosslogic.ratelimit import (
    AdmissionRequest,
    InMemoryRateLimiter,
    Limits,
    MeteredRateLimiter,
    RateLimitConfig,
    RateLimiter,
    Subject,
    admission_request_for,
    build_rate_limiter,
    key_subject,
    tenant_subject,
)
from crosslogic.ratelimit.redis_backend import hash_tag, subject_keys
from crosslogic.tenants.models import Limits as TenantLimits


@pytest.mark.parametrize("tenant_id", ["t-1", "acme/prod", "we{ird}", "sp ace", "x" * 150])
def test_all_keys_of_an_admission_share_one_cluster_slot(tenant_id: str) -> None:
    key = Subject(kind="key", id="k{1}", tenant_id=tenant_id)
    tenant = Subject(kind="tenant", id=tenant_id, tenant_id=tenant_id)
    keys = subject_keys("ns", key) + subject_keys("ns", tenant)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert "{" not in hash_tag(tenant_id) and "}" not in hash_tag(tenant_id)


def test_different_tenants_spread_over_slots() -> None:
    slots = {key_slot(subject_keys("ns", Subject(kind="tenant", id=f"t{i}", tenant_id=f"t{i}"))[0]
                      .encode()) for i in range(50)}
    assert len(slots) > 40


async def test_metered_limiter_reports_decisions_latency_and_leases(
    new_subjects: SubjectsFactory,
) -> None:
    metrics = RecordingMetrics()
    limiter = MeteredRateLimiter(InMemoryRateLimiter(RateLimitConfig(window_s=30)), metrics)
    tenant, (key,) = new_subjects(tenant=Limits(rpm=1))
    admitted = await admit(limiter, tenant, key)
    await admit(limiter, tenant, key)
    assert [d["outcome"] for d in metrics.decisions] == ["admitted", "rejected"]
    assert metrics.decisions[1]["reason"] == "rpm" and metrics.decisions[1]["model"] == "test-model"
    assert metrics.decisions[0]["key_prefix"] == key.id[:8]
    assert metrics.leases[tenant.id] == 1
    await limiter.settle(admitted, 1)
    assert metrics.leases[tenant.id] == 0
    assert [op for op, _, _ in metrics.latencies] == ["admit", "admit", "settle"]
    assert all(backend == "memory" and s >= 0 for _, backend, s in metrics.latencies)


async def test_operator_view(limiter: RateLimiter, new_subjects: SubjectsFactory) -> None:
    tenant, (key,) = new_subjects(key=Limits(rpm=10, tpm=1000, max_concurrency=5))
    first = await admit(limiter, tenant, key, tokens=300)
    await admit(limiter, tenant, key, tokens=200)
    await limiter.settle(first, 100)
    state = await limiter.state(key)
    assert (state.requests_in_window, state.tokens_in_window) == (2, 300)
    assert (state.remaining_requests, state.remaining_tokens) == (8, 700)
    assert state.active_leases == 1 and state.limits.max_concurrency == 5
    assert 29 < state.reset_s <= 30 and state.window_s == 30
    # The tenant has no limits of its own, but its live usage is still visible.
    tenant_state = await limiter.state(tenant)
    assert tenant_state.remaining_requests is None and tenant_state.active_leases == 1


def test_fail_open_share_divides_limits_by_replicas() -> None:
    limits = Limits(rpm=10, tpm=1001, max_concurrency=1)
    assert limits.scaled_down(4) == Limits(rpm=2, tpm=250, max_concurrency=1)
    assert Limits(rpm=0).scaled_down(3) == Limits(rpm=0)
    assert Limits().scaled_down(3) == Limits()


def test_build_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        build_rate_limiter(RateLimitConfig(), redis_url=None)


async def test_build_prefers_redis(rl_redis_url: str) -> None:
    limiter = build_rate_limiter(RateLimitConfig(), redis_url=rl_redis_url,
                                 in_cluster=InMemoryRateLimiter())
    assert limiter.backend_name == "redis"
    await limiter.close()


async def test_admission_from_an_auth_context(limiter: RateLimiter) -> None:
    tenant_id, key_id = uuid.uuid4(), uuid.uuid4()
    auth = AuthContext(
        tenant_id=tenant_id, tenant_name="acme", key_id=key_id, key_name="ci", key_prefix="sk-abc12",
        scopes=frozenset(), key_limits=TenantLimits(rpm=2), tenant_limits=TenantLimits(tpm=500),
        stripe_customer_id=None,
    )
    request = admission_request_for(auth, request_id="req-auth-1", reserved_tokens=100, model="m")
    assert request.key is not None and request.key.limits == Limits(rpm=2)
    assert request.tenant.limits == Limits(tpm=500) and request.key_prefix == "sk-abc12"
    admission = await limiter.admit(request)
    assert admission.admitted and admission.key_id == str(key_id)
    # The admin view addresses the same state from stored rows.
    state = await limiter.state(key_subject(tenant_id, key_id, TenantLimits(rpm=2)))
    assert state.requests_in_window == 1 and state.remaining_requests == 1
    tenant_state = await limiter.state(tenant_subject(tenant_id, TenantLimits(tpm=500)))
    assert tenant_state.tokens_in_window == 100 and tenant_state.remaining_tokens == 400


def test_a_key_must_belong_to_the_admitted_tenant() -> None:
    tenant = tenant_subject("t-a", None)
    with pytest.raises(ValueError):
        AdmissionRequest(request_id="r", tenant=tenant, key=key_subject("t-b", "k", None),
                         reserved_tokens=0)
    with pytest.raises(ValueError):
        AdmissionRequest(request_id="r", tenant=key_subject("t-a", "k", None), reserved_tokens=0)
    with pytest.raises(ValueError):
        AdmissionRequest(request_id="bad id with spaces", tenant=tenant, reserved_tokens=0)
