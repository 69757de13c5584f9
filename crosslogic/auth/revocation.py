"""Revocations, expiry changes and suspensions reaching the key cache: PostgreSQL NOTIFY messages
(crosslogic/auth/invalidation_listener.py) drop the affected entries as soon as the change commits."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from crosslogic.auth.key_cache import KeyCache


def apply_notification(cache: KeyCache, message: dict[str, Any] | None) -> None:
    """Drop what `message` says changed: one key (table api_keys, by prefix) or one tenant's keys."""
    try:
        if message is not None and message.get("table") == "api_keys" and message.get("prefix"):
            cache.invalidate_key(str(message["prefix"]))
            return
        if message is not None and message.get("table") == "tenants" and message.get("id"):
            cache.invalidate_tenant(UUID(str(message["id"])))
            return
    except ValueError:
        pass
    # Unknown shape: we cannot tell what changed, so nothing cached can be trusted.
    cache.invalidate_all()
