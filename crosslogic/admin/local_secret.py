"""The local stack's admin JWT secret, and minting short-lived admin tokens with it.

On a laptop nobody should have to invent a secret: when `CROSSLOGIC_ADMIN_JWT_SECRET` is unset, the
first start writes a random one to `$CROSSLOGIC_HOME/admin-jwt-secret` (mode 0600) and every later
start, and `crosslogic admin token`, reuses it. Production sets the env var or uses OIDC instead.
The regions' master secret (CROSSLOGIC_REGION_MASTER_SECRET) is kept the same way for `local up`,
in `$CROSSLOGIC_HOME/region-master-secret`.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import jwt

from crosslogic.admin.jwt_auth import (
    DEFAULT_MAX_LIFETIME_S,
    LOCAL_AUDIENCE,
    LOCAL_ISSUER,
    AdminScope,
    check_secret_strength,
)
from crosslogic.errors import ConfigError
from crosslogic.settings import Settings, parse_region_master_secret

SECRET_FILENAME = "admin-jwt-secret"
REGION_MASTER_FILENAME = "region-master-secret"
DEFAULT_TOKEN_TTL_S = 15 * 60


def secret_path(home: Path) -> Path:
    return home / SECRET_FILENAME


def load_or_create_local_secret(home: Path) -> str:
    """Read the secret file, creating it (0600, atomically) on first use."""
    secret = _load_or_create(secret_path(home), lambda: secrets.token_urlsafe(48))
    check_secret_strength(secret)
    return secret


def load_or_create_region_master_secret(home: Path) -> str:
    """The local stack's regions' master secret (hex), created (0600, atomically) on first use."""
    text = _load_or_create(home / REGION_MASTER_FILENAME, lambda: secrets.token_hex(32))
    parse_region_master_secret(text)  # a hand-edited file fails here, naming the variable
    return text


def _load_or_create(path: Path, new_secret: Callable[[], str]) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_exclusively(path, new_secret())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
    return path.read_text().strip()


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
        return settings.admin_jwt_secret.get_secret_value()
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
    max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
) -> str:
    """An HS256 admin JWT valid for `ttl_s` seconds; the verifier refuses more than its bound."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    if ttl_s > max_lifetime_s:
        raise ValueError(f"ttl_s {ttl_s} exceeds the admin token lifetime bound of {max_lifetime_s:g} s")
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
