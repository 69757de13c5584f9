"""Tenants in PostgreSQL. Every function takes a connection (to join a caller's transaction) or the pool.

Changes to a tenant fire the `crosslogic_auth` notification (a trigger from migration 0001), so
key caches in every ingress replica see a suspension or a new limit within a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import asyncpg

from crosslogic.errors import ConflictError, NotFoundError
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor
from crosslogic.storage.pagination import (
    DEFAULT_PAGE_SIZE,
    Page,
    check_page_size,
    to_page,
    unknown_cursor,
)
from crosslogic.tenants.models import Tenant, TenantCreate, TenantStatus, TenantUpdate

TENANT_COLUMNS = (
    "id, name, status, stripe_customer_id, rpm, tpm, max_concurrency, created_at, updated_at, preferred_region, weight"
)
# Columns an update may touch; names come from this tuple only, never from input.
_UPDATABLE = ("status", "stripe_customer_id", "rpm", "tpm", "max_concurrency", "preferred_region", "weight")


# Migration 0013: one Stripe customer bills one tenant (webhooks find the tenant by its customer).
_CUSTOMER_INDEX = "tenants_stripe_customer_id_key"


@contextmanager
def _customer_taken(customer: str | None) -> Iterator[None]:
    """A second tenant on a customer is a 409 naming the parameter (inside `translate_db_errors`)."""
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != _CUSTOMER_INDEX:
            raise
        raise ConflictError(
            f"stripe_customer_id {customer!r} is already used by another tenant",
            param="stripe_customer_id",
        ) from exc


def tenant_from_row(row: asyncpg.Record) -> Tenant:
    return Tenant.model_validate(dict(row))


def _not_found(tenant_id: UUID) -> NotFoundError:
    return NotFoundError(f"tenant {tenant_id} not found", param="tenant_id")


async def create_tenant(db: Executor, spec: TenantCreate) -> Tenant:
    with (
        translate_db_errors(conflict=f"a tenant named {spec.name!r} already exists", param="name"),
        _customer_taken(spec.stripe_customer_id),
    ):
        row = await db.fetchrow(
            f"""
            INSERT INTO tenants (name, stripe_customer_id, rpm, tpm, max_concurrency, preferred_region, weight)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            RETURNING {TENANT_COLUMNS}
            """,
            spec.name,
            spec.stripe_customer_id,
            spec.rpm,
            spec.tpm,
            spec.max_concurrency,
            spec.preferred_region,
            spec.weight,
        )
    assert row is not None
    return tenant_from_row(row)


async def get_tenant(db: Executor, tenant_id: UUID, *, for_update: bool = False) -> Tenant:
    """`for_update` locks the row until the caller's transaction ends (read-before-write audits)."""
    lock = " FOR UPDATE" if for_update else ""
    with translate_db_errors():
        row = await db.fetchrow(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1{lock}", tenant_id)
    if row is None:
        raise _not_found(tenant_id)
    return tenant_from_row(row)


async def get_tenant_by_name(db: Executor, name: str) -> Tenant:
    with translate_db_errors():
        row = await db.fetchrow(f"SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1", name)
    if row is None:
        raise NotFoundError(f"tenant {name!r} not found", param="name")
    return tenant_from_row(row)


async def list_tenants(
    db: Executor,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    after: UUID | None = None,
    status: TenantStatus | None = None,
) -> Page[Tenant]:
    check_page_size(limit)
    with translate_db_errors():
        if after is not None and not await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", after
        ):
            raise unknown_cursor(after)
        rows = await db.fetch(
            f"""
            SELECT {TENANT_COLUMNS} FROM tenants
            WHERE ($2::uuid IS NULL
                   OR (created_at, id) > (SELECT created_at, id FROM tenants WHERE id = $2))
              AND ($3::text IS NULL OR status = $3)
            ORDER BY created_at, id
            LIMIT $1
            """,
            limit + 1,
            after,
            status,
        )
    return to_page(rows, limit, tenant_from_row)


async def update_tenant(db: Executor, tenant_id: UUID, changes: TenantUpdate) -> Tenant:
    """Apply the fields present in `changes`; with none present, return the tenant unchanged."""
    fields = [name for name in _UPDATABLE if name in changes.model_fields_set]
    if not fields:
        return await get_tenant(db, tenant_id)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
    values = [getattr(changes, name) for name in fields]
    with translate_db_errors(), _customer_taken(changes.stripe_customer_id):
        row = await db.fetchrow(
            f"""
            UPDATE tenants SET {assignments}, updated_at = now()
            WHERE id = $1
            RETURNING {TENANT_COLUMNS}
            """,
            tenant_id,
            *values,
        )
    if row is None:
        raise _not_found(tenant_id)
    return tenant_from_row(row)


async def set_tenant_status(db: Executor, tenant_id: UUID, status: TenantStatus) -> Tenant:
    """Suspend or reactivate; every ingress replica honours it within a second."""
    return await update_tenant(db, tenant_id, TenantUpdate(status=status))
