"""The region registry and the shared nonce store, on real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest
from heartbeat_support import heartbeat, region_name

from crosslogic.errors import ConflictError, InvalidRequestError, NotFoundError
from crosslogic.regions import registry
from crosslogic.regions.registry import PgNonceStore


async def test_create_get_list_and_the_name_rules(db_pool: asyncpg.Pool) -> None:
    name = region_name("eu")
    created = await registry.create_region(db_pool, name)
    assert created.name == name and created.secret_generation == 1
    assert not created.operator_drained and not created.disabled and created.last_heartbeat_at is None
    assert await registry.get_region(db_pool, name) == created
    assert name in [r.name for r in await registry.list_regions(db_pool)]
    with pytest.raises(ConflictError, match="already exists"):
        await registry.create_region(db_pool, name)
    with pytest.raises(NotFoundError):
        await registry.get_region(db_pool, region_name("missing"))
    assert await registry.find_region(db_pool, region_name("missing")) is None
    # The database refuses a name the API would refuse, whoever writes it.
    with pytest.raises(InvalidRequestError):
        await registry.create_region(db_pool, "Not A Region")


async def test_drain_rotate_disable_and_create_again(db_pool: asyncpg.Pool) -> None:
    name = region_name()
    await registry.create_region(db_pool, name)
    assert (await registry.set_drained(db_pool, name, True)).operator_drained
    assert (await registry.rotate_generation(db_pool, name)).secret_generation == 2
    disabled = await registry.disable_region(db_pool, name)
    assert disabled.disabled and disabled.operator_drained
    # Idempotent: the first disabled_at stays.
    assert (await registry.disable_region(db_pool, name)).disabled_at == disabled.disabled_at
    assert name not in [r.name for r in await registry.list_regions(db_pool, include_disabled=False)]
    for change in (registry.rotate_generation(db_pool, name), registry.set_drained(db_pool, name, False)):
        with pytest.raises(ConflictError, match="is disabled"):
            await change
    # Created again: enabled, undrained, and a new generation (the old secret stays dead).
    again = await registry.create_region(db_pool, name)
    assert not again.disabled and not again.operator_drained and again.secret_generation == 3
    with pytest.raises(NotFoundError):
        await registry.disable_region(db_pool, region_name("missing"))


async def test_record_heartbeat_keeps_the_last_one(db_pool: asyncpg.Pool) -> None:
    name = region_name()
    await registry.create_region(db_pool, name)
    beat = heartbeat(name)
    await registry.record_heartbeat(db_pool, name, gateway_url="http://10.0.0.1:1", versions=beat.versions,
                                    agent_id="a1")
    await registry.record_heartbeat(db_pool, name, gateway_url="http://10.0.0.2:2", versions=beat.versions,
                                    agent_id="a2")
    record = await registry.get_region(db_pool, name)
    assert (record.last_gateway_url, record.last_agent_id, record.last_versions) == (
        "http://10.0.0.2:2", "a2", beat.versions
    )


async def test_nonces_are_claimed_once_across_stores_and_pruned(db_pool: asyncpg.Pool) -> None:
    name = region_name()
    other = region_name()
    for region in (name, other):
        await registry.create_region(db_pool, region)
    first, second = PgNonceStore(db_pool, skew_s=30), PgNonceStore(db_pool, skew_s=30)
    assert await first.claim(name, "n1", 0)
    assert not await first.claim(name, "n1", 0)
    assert not await second.claim(name, "n1", 0)  # another ingress replica
    assert await second.claim(other, "n1", 0)  # nonces are per region
    await db_pool.execute(
        "UPDATE region_nonces SET seen_at = now() - interval '61 seconds' WHERE region = $1", name
    )
    assert await first.prune() >= 1
    assert await db_pool.fetchval("SELECT count(*) FROM region_nonces WHERE region = $1", name) == 0
    assert await db_pool.fetchval("SELECT count(*) FROM region_nonces WHERE region = $1", other) == 1
