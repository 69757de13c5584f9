"""Start-up wiring of the admin plane: pick the JWT trust source and build `AdminDeps`."""

from __future__ import annotations

import asyncpg
from pydantic import SecretStr

from crosslogic.admin.deps import AdminDeps
from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.local_secret import load_or_create_local_secret
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle
from crosslogic.settings import Settings


def admin_auth_config(settings: Settings, *, local_stack: bool = False) -> AdminAuthConfig:
    """The admin auth configuration, or ConfigError (one line) when it is missing or weak.

    Only the local stack may fall back to generating `$CROSSLOGIC_HOME/admin-jwt-secret`; a
    deployed cluster must be given a secret or an OIDC issuer explicitly.
    """
    secret = settings.admin_jwt_secret
    if secret is None and local_stack and not settings.admin_oidc_issuer:
        secret = SecretStr(load_or_create_local_secret(settings.home))
    config = AdminAuthConfig.from_settings(settings, hs256_secret=secret)
    config.validate_for_startup()
    return config


def build_admin_deps(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    local_stack: bool = False,
    throttle: AuthThrottleConfig | None = None,
) -> AdminDeps:
    verifier = AdminJWTVerifier(admin_auth_config(settings, local_stack=local_stack))
    return AdminDeps(pool=pool, verifier=verifier, throttle=FailedAuthThrottle(throttle))
