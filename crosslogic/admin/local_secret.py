"""The local stack's admin JWT secret, and minting short-lived admin tokens with it.

On a laptop nobody should have to invent a secret: when `CROSSLOGIC_ADMIN_JWT_SECRET` is unset, the
first start writes a random one to `$CROSSLOGIC_HOME/admin-jwt-secret` (mode 0600) and every later
start, and `crosslogic admin token`, reuses it. Production sets the env var or uses OIDC instead.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path

import jwt

from crosslogic.admin.jwt_auth import LOCAL_AUDIENCE, LOCAL_ISSUER, AdminScope, check_secret_strength
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

SECRET_FILENAME = "admin-jwt-secret"
DEFAULT_TOKEN_TTL_S = 15 * 60


def secret_path(home: Path) -> Path:
    return home / SECRET_FILENAME


def load_or_create_local_secret(home: Path) -> str:
    """Read the secret file, creating it (0600, atomically) on first use."""
    path = secret_path(home)
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        _create_exclusively(path, secrets.token_urlsafe(48))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    secret = path.read_text().strip()
    check_secret_strength(secret)
    return secret


def _create_exclusively(path: Path, secret: str) -> None:
    # Write a private temp file, then hard-link it into place: readers never see a half-written
    # file, and when several processes start at once exactly one secret wins.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def resolve_admin_secret(settings: Settings, *, create_local: bool = True) -> str:
    """The HS256 secret: the env var if set, else the local file (created when allowed)."""
    if settings.admin_jwt_secret:
        return settings.admin_jwt_secret
    if not create_local and not secret_path(settings.home).exists():
        raise ConfigError(
            f"no admin secret: set CROSSLOGIC_ADMIN_JWT_SECRET or start the local stack once to create "
            f"{secret_path(settings.home)}"
        )
    return load_or_create_local_secret(settings.home)


def mint_admin_token(
    secret: str,
    *,
    subject: str = "local-operator",
    scopes: Iterable[AdminScope | str] = (AdminScope.WRITE,),
    ttl_s: int = DEFAULT_TOKEN_TTL_S,
    issuer: str = LOCAL_ISSUER,
    audience: str = LOCAL_AUDIENCE,
) -> str:
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "scope": " ".join(str(scope) for scope in scopes),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
