"""Failed API-key authentication is throttled per address and per prefix, before any lookup.

Real PostgreSQL; `KeyAuthenticator.lookups` counts the queries it sends.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from typing import Any

import asyncpg
import pytest
import test_key_auth
from test_key_auth import MakeAuth

from crosslogic.auth.client_address import LOOPBACK, ClientAddressConfig
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.auth.throttle import THROTTLED_CODE, AuthThrottleConfig, FailureBudget
from crosslogic.errors import AuthenticationError, RateLimitError
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, CreatedApiKey, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

# test_key_auth.py's fixture (authenticators with their own pools), shared by name.
make_auth = test_key_auth.make_auth


def throttle(address: int = 1000, prefix: int = 1000, window_s: float = 60.0) -> AuthThrottleConfig:
    return AuthThrottleConfig(
        per_address=FailureBudget(failures=address, window_s=window_s),
        per_prefix=FailureBudget(failures=prefix, window_s=window_s),
    )


def scope(address: str, *forwarded_for: str) -> dict[str, Any]:
    """The ASGI scope of a request from `address` (what uvicorn hands the app)."""
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    return {"type": "http", "client": (address, 40000), "headers": headers}


def random_key() -> str:
    return "Bearer sk-cl-" + secrets.token_urlsafe(32)


async def new_key(db: asyncpg.Pool) -> CreatedApiKey:
    tenant = await create_tenant(db, TenantCreate(name=f"t-{uuid.uuid4().hex[:10]}"))
    return await create_api_key(db, tenant.id, ApiKeyCreate(name="throttle-test"))


async def outcome(auth: KeyAuthenticator, header: str, asgi_scope: dict[str, Any]) -> Any:
    try:
        return await auth.authenticate(header, None, asgi_scope=asgi_scope)
    except (AuthenticationError, RateLimitError) as exc:
        return exc


async def test_bad_keys_from_one_address_get_429_before_any_lookup(make_auth: MakeAuth) -> None:
    auth = await make_auth(throttle=throttle(address=10))
    attacker = scope("198.51.100.7")
    results = [await outcome(auth, random_key(), attacker) for _ in range(200)]
    assert all(isinstance(r, AuthenticationError) for r in results[:10])
    assert auth.lookups == 10  # one query per unknown prefix, up to the budget
    throttled = results[10:]
    assert all(isinstance(r, RateLimitError) for r in throttled)
    assert auth.lookups == 10  # nothing beyond it reached PostgreSQL
    first = throttled[0]
    assert first.status_code == 429 and first.code == THROTTLED_CODE
    assert first.body()["error"]["type"] == "requests"
    # The budget refills one failure every window / failures = 6 s.
    assert 5_000 < int(first.headers["retry-after-ms"]) <= 6_000
    assert first.headers["retry-after"] == "6"
    assert "sk-cl-" not in first.message


async def test_good_key_from_another_address_still_works(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    key = await new_key(db_pool)
    auth = await make_auth(throttle=throttle(address=5))
    for _ in range(20):
        await outcome(auth, random_key(), scope("198.51.100.8"))
    assert isinstance(await outcome(auth, random_key(), scope("198.51.100.8")), RateLimitError)
    lookups = auth.lookups
    # Another client, key not cached: looked up and accepted.
    ctx = await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=scope("192.0.2.10"))
    assert ctx.key_id == key.key.id and auth.lookups == lookups + 1
    # From the throttled address: a key proven on this replica passes, even after the cache is
    # emptied (listener reconnect) and it needs a lookup again.
    auth.invalidate_all()
    again = await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=scope("198.51.100.8"))
    assert again.key_id == key.key.id
    # A key never seen here is the one thing a throttled address cannot get looked up.
    fresh = await new_key(db_pool)
    refused = await outcome(auth, f"Bearer {fresh.secret}", scope("198.51.100.8"))
    assert isinstance(refused, RateLimitError)


async def test_prefix_spraying_does_not_lock_out_the_real_key(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    key = await new_key(db_pool)
    auth = await make_auth(throttle=throttle(address=1000, prefix=5))
    owner = scope("192.0.2.20")
    await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=owner)
    lookups = auth.lookups
    prefix = key.secret[: len("sk-cl-") + 8]
    results = [
        await outcome(auth, f"Bearer {prefix}{secrets.token_urlsafe(32)}", scope(f"203.0.113.{i}"))
        for i in range(1, 60)
    ]
    assert all(isinstance(r, AuthenticationError) for r in results[:5])
    assert all(isinstance(r, RateLimitError) and r.code == THROTTLED_CODE for r in results[5:])
    assert "prefix" in results[5].message
    assert auth.lookups == lookups  # a wrong secret on a cached prefix needs no query
    # The owner, from anywhere, cached or not, is never refused.
    assert (await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=owner)).key_id == key.key.id
    auth.invalidate_all()
    ctx = await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=scope("203.0.113.1"))
    assert ctx.key_id == key.key.id


async def test_spraying_an_unknown_prefix_from_many_addresses_is_throttled(make_auth: MakeAuth) -> None:
    auth = await make_auth(throttle=throttle(address=1000, prefix=3))
    prefix = "sk-cl-" + secrets.token_urlsafe(6)[:8]
    results = [
        await outcome(auth, f"Bearer {prefix}{secrets.token_urlsafe(32)}", scope(f"203.0.113.{i}"))
        for i in range(1, 30)
    ]
    assert [isinstance(r, RateLimitError) for r in results] == [False] * 3 + [True] * 26
    assert auth.lookups == 1  # the negative cache answers the rest


async def test_budget_refills_and_throttled_attempts_do_not_spend_it(make_auth: MakeAuth) -> None:
    auth = await make_auth(throttle=throttle(address=2, window_s=0.4))
    client = scope("198.51.100.9")
    assert isinstance(await outcome(auth, random_key(), client), AuthenticationError)
    assert isinstance(await outcome(auth, random_key(), client), AuthenticationError)
    refused = await outcome(auth, random_key(), client)
    assert isinstance(refused, RateLimitError)
    assert 0 < int(refused.headers["retry-after-ms"]) <= 200
    for _ in range(10):  # ignoring retry-after costs nothing and does not push it further
        await outcome(auth, random_key(), client)
    await asyncio.sleep(0.21)
    assert isinstance(await outcome(auth, random_key(), client), AuthenticationError)
    assert isinstance(await outcome(auth, random_key(), client), RateLimitError)


async def test_spoofed_forwarded_for_does_not_escape_the_throttle(make_auth: MakeAuth) -> None:
    """Through HAProxy, uvicorn puts the client's own X-Forwarded-For into the peer address."""
    auth = await make_auth(throttle=throttle(address=5))
    results = []
    for i in range(30):
        spoofed = f"198.18.{i}.1"
        # What uvicorn's proxy-headers rewrite makes of a loopback peer with that header.
        results.append(await outcome(auth, random_key(), scope(spoofed, spoofed)))
    assert sum(isinstance(r, RateLimitError) for r in results) == 25
    assert auth.lookups == 5


async def test_negative_cache_is_bounded_and_never_evicts_real_keys(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    key = await new_key(db_pool)
    auth = await make_auth(
        max_entries=50, max_negative_entries=100, throttle=AuthThrottleConfig(enabled=False)
    )
    header = f"Bearer {key.secret}"
    await auth.authenticate(header, None)
    for _ in range(1_000):
        await outcome(auth, random_key(), scope("198.51.100.10"))
    assert auth.cached_unknown_prefixes == 100
    assert auth.cached_keys == 1
    lookups = auth.lookups
    await auth.authenticate(header, None)
    assert auth.lookups == lookups  # still cached: the flood did not flush it


async def test_throttle_memory_is_bounded(make_auth: MakeAuth) -> None:
    auth = await make_auth(throttle=AuthThrottleConfig(max_entries=64))
    for i in range(300):
        await outcome(auth, random_key(), scope(f"10.1.{i // 256}.{i % 256}"))
    addresses, prefixes = auth.throttle.tracked
    assert addresses <= 64 and prefixes <= 64


# --- which client: the address a request is throttled under ------------------------------------


def test_client_address_without_forwarding_is_the_peer() -> None:
    config = ClientAddressConfig()
    assert config.resolve("198.51.100.1") == "198.51.100.1"
    assert config.resolve("127.0.0.1") == config.resolve("::1") == LOOPBACK
    assert config.resolve("::ffff:198.51.100.1") == "198.51.100.1"
    # IPv6 by /64: one host usually holds all of it.
    assert config.resolve("2001:db8:1:2::1") == config.resolve("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert config.resolve(None) == "unknown"


def test_forwarded_for_is_ignored_unless_hops_are_configured() -> None:
    config = ClientAddressConfig()
    # Not rewritten (peer not in the header): the peer.
    assert config.resolve("198.51.100.1", ["203.0.113.5"]) == "198.51.100.1"
    # Rewritten by uvicorn from a client-chosen header: the real peer was the local HAProxy.
    assert config.resolve("203.0.113.5", ["203.0.113.5"]) == LOOPBACK
    assert config.resolve("203.0.113.6", ["1.2.3.4, 203.0.113.6"]) == LOOPBACK


def test_forwarded_for_hops_take_the_entry_our_proxy_appended() -> None:
    config = ClientAddressConfig(forwarded_for_hops=1)
    # The front proxy appended the address it saw; the client's own entries to its left are ignored.
    assert config.resolve("127.0.0.1", ["6.6.6.6, 198.51.100.2"]) == "198.51.100.2"
    assert config.resolve("127.0.0.1", ["6.6.6.6", "198.51.100.2:5555"]) == "198.51.100.2"
    # uvicorn already rewrote the peer: still the rightmost entry.
    assert config.resolve("198.51.100.2", ["6.6.6.6, 198.51.100.2"]) == "198.51.100.2"
    # A peer that is not a trusted proxy: its header is the client's own.
    assert config.resolve("192.0.2.50", ["198.51.100.2"]) == "192.0.2.50"
    two = ClientAddressConfig(forwarded_for_hops=2, trusted_proxies=["10.0.0.0/8"])
    assert two.resolve("10.0.0.3", ["6.6.6.6, 198.51.100.3, 10.0.0.9"]) == "198.51.100.3"
    # Fewer entries than hops: it did not come through the front proxies.
    assert two.resolve("10.0.0.3", ["198.51.100.3"]) == "10.0.0.3"
    with pytest.raises(ValueError):
        ClientAddressConfig(trusted_proxies=["not-a-network"])


async def test_concurrent_bad_keys_cannot_overrun_the_budget(make_auth: MakeAuth) -> None:
    """The budget is spent before the lookup: 200 keys at once do not all reach PostgreSQL."""
    auth = await make_auth(throttle=throttle(address=10))
    attacker = scope("198.51.100.11")
    results = await asyncio.gather(*(outcome(auth, random_key(), attacker) for _ in range(200)))
    assert auth.lookups == 10
    assert sum(isinstance(r, AuthenticationError) for r in results) == 10
    assert sum(isinstance(r, RateLimitError) for r in results) == 190


async def test_a_successful_lookup_gives_its_reservation_back(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    auth = await make_auth(throttle=throttle(address=3))
    client = scope("198.51.100.12")
    for _ in range(10):  # new keys from one address: each reserves, succeeds, refunds
        key = await new_key(db_pool)
        assert (await auth.authenticate(f"Bearer {key.secret}", None, asgi_scope=client)).key_id == key.key.id
    assert [isinstance(await outcome(auth, random_key(), client), AuthenticationError) for _ in range(4)] == [
        True, True, True, False,
    ]
