"""Prefix-cache namespaces: which requests may reuse each other's cached prompt prefixes.

vLLM reuses the KV blocks of any earlier request that shares a prompt prefix, and a reused prefix
prefills measurably faster (the `engine` figure of `server-timing` shows it): without namespaces a
tenant could learn whether another tenant recently sent a given prefix. vLLM salts a request's
block hashes with its `cache_salt` (chat, completions and embeddings requests all accept it), so
requests only share blocks when they carry the same salt.

The ingress sets the salt from the authenticated key, per the model's `prefix_cache_scope`:

- ``tenant`` (default): the tenant's keys share a namespace, no one else's;
- ``key``: each API key has its own;
- ``shared``: no salt, every tenant shares the cache (opt-in: it leaks prefix timing across tenants).

A client's own `cache_salt` is refused with a 400, never merged or overwritten silently: accepting
it would let a caller name another tenant's namespace, and a client that sets one expects an
isolation it would not be getting.

The salt is derived from the tenant's or key's id (random UUIDv4s minted by PostgreSQL). It is not a
secret and need not be one: only the ingress can put a salt on a request (the engines are reachable
through the cluster only), and no response carries it. Deriving it (rather than drawing it per
process) keeps it identical on every ingress replica, so a tenant's requests share its cache
whichever replica admits them.
"""

from __future__ import annotations

from typing import Any

from crosslogic.auth.context import AuthContext
from crosslogic.config import PrefixCacheScope
from crosslogic.errors import InvalidRequestError

CACHE_SALT_FIELD = "cache_salt"


def cache_salt(scope: PrefixCacheScope, auth: AuthContext) -> str | None:
    """The salt for a request of this key under `scope`; None when the cache is shared.

    The prefixes keep a tenant's and a key's namespaces apart even if ids ever collided; vLLM caps
    salts at 128 characters without '@', '/', '\\' (these are 38).
    """
    if scope == "tenant":
        return f"tenant-{auth.tenant_id.hex}"
    if scope == "key":
        return f"key-{auth.key_id.hex}"
    return None


def salted_body(body: dict[str, Any], scope: PrefixCacheScope, auth: AuthContext) -> dict[str, Any]:
    """The body to send to the engine: the client's salt refused, ours set (a new dict)."""
    if CACHE_SALT_FIELD in body:
        raise InvalidRequestError(
            "cache_salt is set by the server (each organization has its own prefix cache); "
            "remove it from the request",
            param=CACHE_SALT_FIELD,
            code="unsupported_parameter",
        )
    salt = cache_salt(scope, auth)
    if salt is None:
        return body
    return {**body, CACHE_SALT_FIELD: salt}
