"""A batch's credential, checked again while its lines run: a batch outlives its creating request as
a stream does, so a revoked or expired key, or a suspended tenant, must stop it too.

The source of truth is the one live streams use (crosslogic/api/live_streams.py): the key
authenticator's cache, kept fresh by PostgreSQL NOTIFY, and its checks. A refusal is what a new
request with the key would get; anything else (the database away, a timeout) says nothing about the
credential, and the batch goes on.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from crosslogic.auth.context import AuthContext
from crosslogic.batches.store import Batch
from crosslogic.errors import (
    AuthenticationError,
    CrossLogicError,
    InsufficientQuotaError,
    PermissionDeniedError,
)
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor

STATEMENT_TIMEOUT_S = 5.0
# What ends a batch: the answers a new request with its key would get (as for live streams).
REFUSALS = (AuthenticationError, PermissionDeniedError, InsufficientQuotaError)


class KeyRecheck(Protocol):
    async def recheck(self, prefix: str) -> AuthContext: ...


class BatchCredentials:
    def __init__(self, db: Executor, keys: KeyRecheck) -> None:
        self._db = db
        self._keys = keys
        self._prefixes: dict[UUID, str | None] = {}  # key id -> lookup prefix (it never changes)

    async def check(self, batch: Batch) -> None:
        """Raise the refusal a request with the batch's key would get now; return if it is allowed."""
        if batch.key_id is None:
            raise AuthenticationError("The API key that created this batch no longer exists.")
        prefix = await self._prefix(batch.key_id)
        if prefix is None:
            raise AuthenticationError("The API key that created this batch no longer exists.")
        context = await self._keys.recheck(prefix)
        if context.tenant_id != batch.tenant_id:  # never expected: a key does not change tenant
            raise AuthenticationError("The API key that created this batch belongs to another organization.")

    async def _prefix(self, key_id: UUID) -> str | None:
        if key_id not in self._prefixes:
            with translate_db_errors():
                prefix = await self._db.fetchval(
                    "SELECT prefix FROM api_keys WHERE id = $1", key_id, timeout=STATEMENT_TIMEOUT_S)
            self._prefixes[key_id] = None if prefix is None else str(prefix)
        return self._prefixes[key_id]


def refusal_code(error: CrossLogicError) -> str:
    """The code a batch stopped by `error` reports: key_revoked for a key no longer valid (revoked,
    expired, deleted), else the refusal's own (tenant_suspended, insufficient_quota)."""
    return "key_revoked" if isinstance(error, AuthenticationError) else error.code
