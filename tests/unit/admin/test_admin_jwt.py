"""Admin JWT verification: HS256 and an OIDC JWKS served on localhost, and every way a token fails."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from jwks_server import JwksServer, ec_key, public_jwk, rsa_key, serve_jwks

from crosslogic.admin.jwt_auth import (
    LOCAL_AUDIENCE,
    LOCAL_ISSUER,
    AdminAuthConfig,
    AdminJWTVerifier,
    AdminScope,
    TokenRejected,
)
from crosslogic.admin.local_secret import load_or_create_local_secret, mint_admin_token, secret_path
from crosslogic.errors import ConfigError, PermissionDeniedError

SECRET = "k3Y-" + "x9Qz7LmP2vRt8WcB5nHj4sDf6gAe1uYo"  # 36 random-looking bytes
AUDIENCE = "crosslogic-admin-api"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice@example.com",
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "scope": "admin:write",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
async def hs_verifier() -> AsyncIterator[AdminJWTVerifier]:
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=SECRET))
    yield verifier
    await verifier.aclose()


async def rejected(verifier: AdminJWTVerifier, token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token)
    assert info.value.status_code == 401
    return info.value.reason


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "short", "changeme" * 5, "a" * 40])
def test_missing_or_weak_secret_fails_start_up(secret: str | None) -> None:
    with pytest.raises(ConfigError):
        AdminJWTVerifier(AdminAuthConfig(hs256_secret=secret))


def test_oidc_needs_issuer_and_audience() -> None:
    with pytest.raises(ConfigError, match="AUDIENCE"):
        AdminJWTVerifier(AdminAuthConfig(oidc_issuer="https://idp.example.com"))


# --- HS256 -----------------------------------------------------------------------------------


async def test_hs256_token_yields_principal(hs_verifier: AdminJWTVerifier) -> None:
    token = mint_admin_token(SECRET, subject="ops@example.com", scopes=[AdminScope.READ, "other"])
    principal = await hs_verifier.verify(token)
    assert principal.subject == "ops@example.com"
    assert principal.scopes == {"admin:read", "other"}
    hs_verifier.authorize(principal, AdminScope.READ)
    with pytest.raises(PermissionDeniedError) as info:
        hs_verifier.authorize(principal, AdminScope.WRITE)
    assert info.value.status_code == 403


async def test_write_scope_implies_read(hs_verifier: AdminJWTVerifier) -> None:
    principal = await hs_verifier.verify(mint_admin_token(SECRET))
    hs_verifier.authorize(principal, AdminScope.READ)
    hs_verifier.authorize(principal, AdminScope.WRITE)


async def test_token_without_admin_scope_is_forbidden(hs_verifier: AdminJWTVerifier) -> None:
    principal = await hs_verifier.verify(jwt.encode(claims(scope="openid profile"), SECRET, "HS256"))
    with pytest.raises(PermissionDeniedError):
        hs_verifier.authorize(principal, AdminScope.READ)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"iss": "https://evil.example.com"}, "wrong_issuer"),
        ({"sub": None}, "invalid"),
        ({"exp": None}, "invalid"),
    ],
)
async def test_hs256_claims_are_checked(
    hs_verifier: AdminJWTVerifier, overrides: dict[str, Any], reason: str
) -> None:
    assert await rejected(hs_verifier, jwt.encode(claims(**overrides), SECRET, "HS256")) == reason


async def test_hs256_wrong_secret_and_tampering(hs_verifier: AdminJWTVerifier) -> None:
    other = jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789", "HS256")
    assert await rejected(hs_verifier, other) == "bad_signature"
    header, payload, signature = mint_admin_token(SECRET, scopes=["admin:read"]).split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["scope"] = "admin:write"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert await rejected(hs_verifier, f"{header}.{forged_payload}.{signature}") == "bad_signature"


async def test_alg_none_and_garbage_are_refused(hs_verifier: AdminJWTVerifier) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert await rejected(hs_verifier, unsigned) == "bad_alg"
    assert await rejected(hs_verifier, "not-a-jwt") == "malformed"
    # An RS256 token when no JWKS is configured.
    assert await rejected(hs_verifier, jwt.encode(claims(), rsa_key(), "RS256")) == "bad_alg"


async def test_failed_attempts_are_logged_as_json(
    hs_verifier: AdminJWTVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    from crosslogic.admin.jwt_auth import log_auth_failure

    with caplog.at_level(logging.WARNING, logger="crosslogic.admin.auth"):
        log_auth_failure("expired", actor="anonymous", client_addr="10.0.0.1")
    line = json.loads(caplog.records[-1].getMessage())
    assert line == {"event": "admin_auth_failed", "reason": "expired", "actor": "anonymous",
                    "client_addr": "10.0.0.1"}


# --- OIDC / JWKS -----------------------------------------------------------------------------


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with serve_jwks() as server:
        yield server


async def oidc_verifier(idp: JwksServer, **extra: Any) -> AdminJWTVerifier:
    config = AdminAuthConfig(
        oidc_issuer=idp.issuer, oidc_audience=AUDIENCE, jwks_min_refresh_interval_s=0, **extra
    )
    return AdminJWTVerifier(config)


def oidc_claims(idp: JwksServer, **overrides: Any) -> dict[str, Any]:
    return claims(**{"iss": idp.issuer, "aud": AUDIENCE, **overrides})


async def test_jwks_rs256_and_es256_with_discovery_and_cache(idp: JwksServer) -> None:
    rsa_private, ec_private = rsa_key(), ec_key()
    idp.publish(public_jwk(rsa_private, "rsa-1", "RS256"), public_jwk(ec_private, "ec-1", "ES256"))
    verifier = await oidc_verifier(idp)
    try:
        rs = jwt.encode(oidc_claims(idp), rsa_private, "RS256", headers={"kid": "rsa-1"})
        es = jwt.encode(oidc_claims(idp, sub="bob"), ec_private, "ES256", headers={"kid": "ec-1"})
        assert (await verifier.verify(rs)).subject == "alice@example.com"
        assert (await verifier.verify(es)).subject == "bob"
        assert (await verifier.verify(rs)).scopes == {"admin:write"}
        assert idp.fetches == 1, "keys are cached between verifications"
    finally:
        await verifier.aclose()


async def test_jwks_refreshes_on_unknown_kid(idp: JwksServer) -> None:
    old, new = rsa_key(), rsa_key()
    idp.publish(public_jwk(old, "old", "RS256"))
    verifier = await oidc_verifier(idp, jwks_url=idp.jwks_url)
    try:
        await verifier.verify(jwt.encode(oidc_claims(idp), old, "RS256", headers={"kid": "old"}))
        idp.publish(public_jwk(new, "new", "RS256"))  # the issuer rotates its key
        principal = await verifier.verify(
            jwt.encode(oidc_claims(idp), new, "RS256", headers={"kid": "new"})
        )
        assert principal.subject == "alice@example.com"
        assert idp.fetches == 2
        stray = jwt.encode(oidc_claims(idp), rsa_key(), "RS256", headers={"kid": "nobody"})
        assert await rejected(verifier, stray) == "unknown_kid"
    finally:
        await verifier.aclose()


async def test_jwks_unknown_kid_refresh_is_rate_limited(idp: JwksServer) -> None:
    key = rsa_key()
    idp.publish(public_jwk(key, "k", "RS256"))
    verifier = AdminJWTVerifier(
        AdminAuthConfig(oidc_issuer=idp.issuer, oidc_audience=AUDIENCE, jwks_min_refresh_interval_s=60)
    )
    try:
        await verifier.verify(jwt.encode(oidc_claims(idp), key, "RS256", headers={"kid": "k"}))
        for _ in range(5):
            stray = jwt.encode(oidc_claims(idp), key, "RS256", headers={"kid": "junk"})
            await rejected(verifier, stray)
        assert idp.fetches == 1
    finally:
        await verifier.aclose()


async def test_jwks_rejections(idp: JwksServer) -> None:
    rsa_private, ec_private = rsa_key(), ec_key()
    idp.publish(public_jwk(rsa_private, "rsa-1", "RS256"), public_jwk(ec_private, "ec-1", "ES256"))
    verifier = await oidc_verifier(idp)
    try:
        def signed(key: Any = rsa_private, alg: str = "RS256", kid: str = "rsa-1", **kw: Any) -> str:
            return jwt.encode(oidc_claims(idp, **kw), key, alg, headers={"kid": kid})

        assert await rejected(verifier, signed(aud="other-api")) == "wrong_audience"
        assert await rejected(verifier, signed(iss="https://evil.example.com")) == "wrong_issuer"
        assert await rejected(verifier, signed(exp=int(time.time()) - 600)) == "expired"
        assert await rejected(verifier, signed(key=rsa_key())) == "bad_signature"
        # Right key id, wrong algorithm family for that key.
        assert await rejected(verifier, signed(key=ec_private, alg="ES256", kid="rsa-1")) == "bad_alg"
        # Key confusion: an HS256 token "signed" with the public key must not pass.
        public_modulus = public_jwk(rsa_private, "rsa-1", "RS256")["n"]
        hs = jwt.encode(oidc_claims(idp), public_modulus, "HS256", headers={"kid": "rsa-1"})
        assert await rejected(verifier, hs) == "bad_alg"
        unsigned = jwt.encode(oidc_claims(idp), None, algorithm="none", headers={"kid": "rsa-1"})
        assert await rejected(verifier, unsigned) == "bad_alg"
    finally:
        await verifier.aclose()


async def test_unreachable_issuer_gives_401_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with serve_jwks() as gone:
        issuer = gone.issuer  # the port is free again once the server stops
    verifier = AdminJWTVerifier(AdminAuthConfig(oidc_issuer=issuer, oidc_audience=AUDIENCE))
    token = jwt.encode(claims(iss=issuer, aud=AUDIENCE), rsa_key(), "RS256", headers={"kid": "k"})
    try:
        with caplog.at_level(logging.WARNING, logger="crosslogic.admin.auth"):
            assert await rejected(verifier, token) == "unknown_kid"
    finally:
        await verifier.aclose()
    assert any('"jwks_fetch_failed"' in record.getMessage() for record in caplog.records)


# --- the local stack's secret ----------------------------------------------------------------


async def test_local_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = load_or_create_local_secret(home)
    assert stat.S_IMODE(os.stat(secret_path(home)).st_mode) == 0o600
    assert load_or_create_local_secret(home) == first
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=first))
    principal = await verifier.verify(mint_admin_token(first, ttl_s=60))
    assert principal.subject == "local-operator"
    assert principal.allows(AdminScope.WRITE)
    secret_path(home).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_local_secret(home)


# --- start-up ----------------------------------------------------------------------------------


def test_startup_refuses_missing_or_weak_secret_outside_the_local_stack(tmp_path: Path) -> None:
    from crosslogic.admin.startup import admin_auth_config
    from crosslogic.settings import Settings

    with pytest.raises(ConfigError, match="CROSSLOGIC_ADMIN_JWT_SECRET"):
        admin_auth_config(Settings(home=tmp_path))
    with pytest.raises(ConfigError, match="too short"):
        admin_auth_config(Settings(home=tmp_path, admin_jwt_secret="hunter2"), local_stack=True)
    assert not secret_path(tmp_path).exists()
    local = admin_auth_config(Settings(home=tmp_path), local_stack=True)
    assert local.hs256_secret is not None
    assert local.hs256_secret.get_secret_value() == secret_path(tmp_path).read_text().strip()
    oidc = admin_auth_config(
        Settings(home=tmp_path / "other", admin_oidc_issuer="https://idp.example.com", admin_oidc_audience="a"),
        local_stack=True,
    )
    assert oidc.hs256_secret is None and oidc.oidc_issuer == "https://idp.example.com"


# --- maximum lifetime (exp - iat) ------------------------------------------------------------


async def test_lifetime_above_the_bound_or_without_iat_or_exp_is_refused(
    hs_verifier: AdminJWTVerifier,
) -> None:
    now = int(time.time())
    at_bound = jwt.encode(claims(iat=now, exp=now + 3600), SECRET, "HS256")
    assert (await hs_verifier.verify(at_bound)).subject == "alice@example.com"
    too_long = jwt.encode(claims(iat=now, exp=now + 3601), SECRET, "HS256")
    assert await rejected(hs_verifier, too_long) == "lifetime_too_long"
    # A backdated iat cannot stretch it: exp is still far off.
    year = jwt.encode(claims(iat=now - 60, exp=now + 365 * 86400), SECRET, "HS256")
    assert await rejected(hs_verifier, year) == "lifetime_too_long"
    for missing in ("iat", "exp"):
        token = jwt.encode(claims(**{missing: None}), SECRET, "HS256")
        assert await rejected(hs_verifier, token) == "invalid"


async def test_lifetime_bound_is_configured() -> None:
    now = int(time.time())
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=SECRET, max_lifetime_s=60))
    assert await rejected(verifier, jwt.encode(claims(iat=now, exp=now + 61), SECRET, "HS256")) == (
        "lifetime_too_long"
    )
    assert await verifier.verify(mint_admin_token(SECRET, ttl_s=60))
    with pytest.raises(ValueError, match="lifetime bound"):
        mint_admin_token(SECRET, ttl_s=61, max_lifetime_s=60)
    with pytest.raises(ValueError, match="lifetime bound"):
        mint_admin_token(SECRET, ttl_s=3601)  # the default bound (1 h)
