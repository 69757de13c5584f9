"""The local stack's tenant and API key: created on first start, kept in `$CROSSLOGIC_HOME/dev-api-key`.

Scripts read the key from that file (mode 0600). If the stored key no longer authenticates (revoked,
database reset), a new one is issued.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from crosslogic.errors import NotFoundError
from crosslogic.tenants import api_key_repository as keys
from crosslogic.tenants import tenant_repository as tenants
from crosslogic.tenants.key_secrets import is_well_formed, lookup_prefix, verify
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate

DEV_TENANT = "local"
DEV_KEY_NAME = "local-dev"


def dev_key_path(home: Path) -> Path:
    return home / "dev-api-key"


async def _stored_key_valid(pool: asyncpg.Pool, secret: str) -> bool:
    if not is_well_formed(secret):
        return False
    record = await keys.find_key_for_auth(pool, lookup_prefix(secret))
    if record is None or not verify(secret, record.secret_digest):
        return False
    return record.key.revoked_at is None and record.tenant.status == "active"


async def ensure_dev_key(pool: asyncpg.Pool, home: Path) -> tuple[str, bool]:
    """(secret, created) for the local tenant's key."""
    path = dev_key_path(home)
    if path.exists():
        secret = path.read_text().strip()
        if await _stored_key_valid(pool, secret):
            return secret, False
    try:
        tenant = await tenants.get_tenant_by_name(pool, DEV_TENANT)
    except NotFoundError:
        tenant = await tenants.create_tenant(pool, TenantCreate(name=DEV_TENANT))
    created = await keys.create_api_key(pool, tenant.id, ApiKeyCreate(name=DEV_KEY_NAME))
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(created.secret + "\n")
    os.replace(tmp, path)
    return created.secret, True
