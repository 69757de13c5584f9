"""API keys in PostgreSQL. Every function takes a connection (to join a caller's transaction) or the pool.

Only the lookup prefix and SHA-256 digest are stored; `create_api_key` is the only place the full
secret exists. Inserts, revocations and other changes notify `crosslogic_auth` (trigger in 0001);
`record_key_usage` writes last_used_at in batches and deliberately does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from crosslogic.errors import InvalidRequestError, NotFoundError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor, connection
from crosslogic.storage.pagination import (
    DEFAULT_PAGE_SIZE,
    Page,
    check_page_size,
    to_page,
    unknown_cursor,
)
from crosslogic.tenants import key_secrets
from crosslogic.tenants.models import (
    ApiKeyCreate,
    ApiKeyLimitsUpdate,
    ApiKeyRecord,
    CreatedApiKey,
    KeyAuthRecord,
    Tenant,
)
from crosslogic.tenants.tenant_repository import TENANT_COLUMNS

KEY_COLUMNS = (
    "id, tenant_id, name, prefix, scopes, expires_at, revoked_at, rpm, tpm, max_concurrency, "
    "created_at, last_used_at, preferred_region"
)
# A lookup-prefix collision (48 random bits) is astronomically rare; retrying costs nothing.
_PREFIX_ATTEMPTS = 5


def key_from_row(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord.model_validate({name: row[name] for name in ApiKeyRecord.model_fields})


def _key_not_found(key_id: UUID) -> NotFoundError:
    return NotFoundError(f"API key {key_id} not found", param="key_id")


async def create_api_key(db: Executor, tenant_id: UUID, spec: ApiKeyCreate) -> CreatedApiKey:
    """Create a key; the returned `secret` is the only copy that will ever exist."""
    if spec.expires_at is not None and spec.expires_at <= datetime.now(UTC):
        raise InvalidRequestError("expires_at must be in the future", param="expires_at")
    async with connection(db) as conn:
        with translate_db_errors(not_found=f"tenant {tenant_id} not found", param="tenant_id"):
            for _ in range(_PREFIX_ATTEMPTS):
                secret = key_secrets.generate_secret()
                try:
                    # A savepoint, so a prefix collision does not abort the caller's transaction.
                    async with conn.transaction():
                        row = await _insert_key(conn, tenant_id, spec, secret)
                except asyncpg.UniqueViolationError:
                    continue
                return CreatedApiKey(key=key_from_row(row), secret=secret)
    raise InvalidRequestError("could not allocate a unique key prefix; retry")


async def _insert_key(
    conn: Executor, tenant_id: UUID, spec: ApiKeyCreate, secret: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys
            (tenant_id, name, prefix, secret_digest, scopes, expires_at, rpm, tpm, max_concurrency,
             preferred_region)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING {KEY_COLUMNS}
        """,
        tenant_id,
        spec.name,
        key_secrets.lookup_prefix(secret),
        key_secrets.digest(secret),
        spec.scopes,
        spec.expires_at,
        spec.rpm,
        spec.tpm,
        spec.max_concurrency,
        spec.preferred_region,
    )
    assert row is not None
    return row


async def get_api_key(db: Executor, key_id: UUID, *, tenant_id: UUID | None = None) -> ApiKeyRecord:
    """With `tenant_id`, a key of another tenant is reported as not found."""
    with translate_db_errors():
        row = await db.fetchrow(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)",
            key_id,
            tenant_id,
        )
    if row is None:
        raise _key_not_found(key_id)
    return key_from_row(row)


async def list_api_keys(
    db: Executor,
    tenant_id: UUID,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    after: UUID | None = None,
    include_revoked: bool = True,
) -> Page[ApiKeyRecord]:
    check_page_size(limit)
    with translate_db_errors():
        if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", tenant_id):
            raise NotFoundError(f"tenant {tenant_id} not found", param="tenant_id")
        if after is not None and not await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND tenant_id = $2)", after, tenant_id
        ):
            raise unknown_cursor(after)
        rows = await db.fetch(
            f"""
            SELECT {KEY_COLUMNS} FROM api_keys
            WHERE tenant_id = $1
              AND ($3::uuid IS NULL
                   OR (created_at, id) > (SELECT created_at, id FROM api_keys WHERE id = $3))
              AND ($4 OR revoked_at IS NULL)
            ORDER BY created_at, id
            LIMIT $2
            """,
            tenant_id,
            limit + 1,
            after,
            include_revoked,
        )
    return to_page(rows, limit, key_from_row)


async def revoke_api_key(
    db: Executor, key_id: UUID, *, tenant_id: UUID | None = None
) -> ApiKeyRecord:
    """Revoke (idempotent: a second revocation keeps the first time). Effective everywhere within 1 s."""
    with translate_db_errors():
        row = await db.fetchrow(
            f"""
            UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
            WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
            RETURNING {KEY_COLUMNS}
            """,
            key_id,
            tenant_id,
        )
    if row is None:
        raise _key_not_found(key_id)
    return key_from_row(row)


_LIMIT_FIELDS = ("rpm", "tpm", "max_concurrency", "preferred_region")


async def update_api_key_limits(db: Executor, key_id: UUID, changes: ApiKeyLimitsUpdate) -> ApiKeyRecord:
    """Set or clear the key's own limits and region preference; every ingress sees them within a
    second (NOTIFY trigger)."""
    fields = [name for name in _LIMIT_FIELDS if name in changes.model_fields_set]
    if not fields:
        return await get_api_key(db, key_id)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
    with translate_db_errors():
        row = await db.fetchrow(
            f"UPDATE api_keys SET {assignments} WHERE id = $1 RETURNING {KEY_COLUMNS}",
            key_id,
            *[getattr(changes, name) for name in fields],
        )
    if row is None:
        raise _key_not_found(key_id)
    return key_from_row(row)


_TENANT_ALIASED = ", ".join(f"t.{c.strip()} AS t_{c.strip()}" for c in TENANT_COLUMNS.split(","))
_KEY_ALIASED = ", ".join(f"k.{c.strip()}" for c in KEY_COLUMNS.split(","))


async def find_key_for_auth(db: Executor, prefix: str) -> KeyAuthRecord | None:
    """The key with this lookup prefix, its digest and its tenant, in one round trip."""
    row = await db.fetchrow(
        f"""
        SELECT {_KEY_ALIASED}, k.secret_digest, {_TENANT_ALIASED},
               coalesce(b.suspended_by_billing, false) AS suspended_for_billing
        FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
        LEFT JOIN billing_tenant_state b ON b.tenant_id = t.id
        WHERE k.prefix = $1
        """,
        prefix,
    )
    if row is None:
        return None
    tenant = Tenant.model_validate({name: row[f"t_{name}"] for name in Tenant.model_fields})
    return KeyAuthRecord(
        key=key_from_row(row),
        secret_digest=row["secret_digest"],
        tenant=tenant,
        suspended_for_billing=row["suspended_for_billing"],
    )


async def record_key_usage(db: Executor, last_used: Mapping[UUID, datetime]) -> int:
    """Write a batch of last-used times in one statement; never moves a time backwards."""
    if not last_used:
        return 0
    ids = list(last_used)
    times = [last_used[i] for i in ids]
    result = await db.execute(
        """
        UPDATE api_keys k SET last_used_at = v.used_at
        FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, used_at)
        WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.used_at)
        """,
        ids,
        times,
    )
    return int(result.split()[-1])
