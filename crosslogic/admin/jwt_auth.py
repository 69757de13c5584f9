"""Admin bearer-JWT verification: a configured HS256 secret or an OIDC issuer's JWKS.

There is no static admin token: every admin request carries a JWT whose signature, expiry, issuer and
audience are checked, and whose lifetime (`exp - iat`, both required) is at most `max_lifetime_s`
(default 1 h): a leaked token is useful for an hour at most, however it was minted. Two sources of
trust, usable together (the token header's `alg` picks one):

- HS256 with `CROSSLOGIC_ADMIN_JWT_SECRET` (>= 32 bytes; the local stack generates one, see
  `crosslogic.admin.local_secret`);
- RS256 / ES256 with the public keys an OIDC issuer publishes as a JWKS. Keys are cached; a token
  signed with an unknown `kid` triggers a refresh (rate-limited, so garbage tokens cannot make us
  hammer the issuer).

Scopes come from the standard space-separated `scope` claim: `admin:read`, `admin:write`, where write
implies read. Failures raise `AuthenticationError` (401) or `PermissionDeniedError` (403) and are logged
as one JSON line each; the HTTP layer additionally writes a 'denied' audit row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from crosslogic.errors import AuthenticationError, ConfigError, PermissionDeniedError
from crosslogic.settings import Settings

log = logging.getLogger("crosslogic.admin.auth")

MIN_SECRET_BYTES = 32
DEFAULT_MAX_LIFETIME_S = 3600.0
# Issuer and audience of tokens minted for HS256 (the local stack's `crosslogic admin token`).
LOCAL_ISSUER = "crosslogic"
LOCAL_AUDIENCE = "crosslogic-admin"
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})
# Strings people paste from examples; long enough to pass the length check but not secret.
_KNOWN_WEAK_SECRETS = frozenset(
    {"changeme", "secret", "password", "your-256-bit-secret", "please-change-me"}
)


class AdminScope(StrEnum):
    READ = "admin:read"
    WRITE = "admin:write"


class AdminPrincipal(BaseModel):
    """Who is calling the admin API, as proven by a verified JWT."""

    model_config = ConfigDict(frozen=True)

    subject: str
    scopes: frozenset[str]

    def allows(self, scope: AdminScope) -> bool:
        if scope is AdminScope.READ:
            return bool({AdminScope.READ.value, AdminScope.WRITE.value} & self.scopes)
        return scope.value in self.scopes


class AdminAuthConfig(BaseModel):
    hs256_secret: SecretStr | None = None
    hs256_issuer: str = LOCAL_ISSUER
    hs256_audience: str = LOCAL_AUDIENCE
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    # None -> discovered from `{oidc_issuer}/.well-known/openid-configuration`.
    jwks_url: str | None = None
    # Seconds of clock skew tolerated on exp/nbf/iat.
    leeway_s: float = Field(default=30.0, ge=0)
    # Longest accepted `exp - iat`. OIDC issuers often mint day-long tokens: raise it for them.
    max_lifetime_s: float = Field(default=DEFAULT_MAX_LIFETIME_S, gt=0)
    jwks_ttl_s: float = Field(default=300.0, gt=0)
    # Minimum spacing of refreshes forced by an unknown kid.
    jwks_min_refresh_interval_s: float = Field(default=10.0, ge=0)
    http_timeout_s: float = Field(default=5.0, gt=0)

    @classmethod
    def from_settings(cls, settings: Settings, *, hs256_secret: SecretStr | None = None) -> AdminAuthConfig:
        secret = hs256_secret if hs256_secret is not None else settings.admin_jwt_secret
        return cls(
            hs256_secret=secret if secret else None,  # an empty secret is no secret
            oidc_issuer=settings.admin_oidc_issuer,
            oidc_audience=settings.admin_oidc_audience,
            jwks_url=settings.admin_oidc_jwks_url,
            max_lifetime_s=settings.admin_jwt_max_lifetime_s,
        )

    def validate_for_startup(self) -> None:
        """Raise ConfigError (one line for the operator) unless at least one sound trust source is set."""
        if self.hs256_secret is not None:
            check_secret_strength(self.hs256_secret.get_secret_value())
        if self.oidc_issuer or self.oidc_audience or self.jwks_url:
            if not (self.oidc_issuer and self.oidc_audience):
                raise ConfigError(
                    "admin OIDC needs both CROSSLOGIC_ADMIN_OIDC_ISSUER and CROSSLOGIC_ADMIN_OIDC_AUDIENCE"
                )
        elif self.hs256_secret is None:
            raise ConfigError(
                "the admin API is enabled but no admin auth is configured: set "
                f"CROSSLOGIC_ADMIN_JWT_SECRET (>= {MIN_SECRET_BYTES} bytes) or CROSSLOGIC_ADMIN_OIDC_ISSUER"
                " + CROSSLOGIC_ADMIN_OIDC_AUDIENCE"
            )


def check_secret_strength(secret: str) -> None:
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"CROSSLOGIC_ADMIN_JWT_SECRET is too short ({len(raw)} bytes, need >= {MIN_SECRET_BYTES}); "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    if len(set(raw)) < 8 or any(weak in secret.lower() for weak in _KNOWN_WEAK_SECRETS):
        raise ConfigError("CROSSLOGIC_ADMIN_JWT_SECRET looks like a placeholder; use a random secret")


def log_auth_failure(reason: str, *, event: str = "admin_auth_failed", **fields: Any) -> None:
    log.warning(json.dumps({"event": event, "reason": reason, **fields}, default=str))


class TokenRejected(AuthenticationError):
    """A 401 that remembers a short machine-readable reason for logs and the audit row."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, code="invalid_token", headers={"www-authenticate": "Bearer"})
        self.reason = reason


class JwksKeyCache:
    """Public keys of an OIDC issuer, by kid, fetched with httpx and refreshed on demand."""

    def __init__(self, config: AdminAuthConfig, client: httpx.AsyncClient | None = None) -> None:
        self._config = config
        self._client = client
        self._owns_client = client is None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._jwks_url: str | None = config.jwks_url
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._config.http_timeout_s)
        return self._client

    async def get(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._config.jwks_ttl_s
        key = self._lookup(kid)
        if key is not None and not stale:
            return key
        async with self._lock:
            key = self._lookup(kid)
            fetched_at = self._fetched_at
            recently = (
                fetched_at is not None
                and time.monotonic() - fetched_at < self._config.jwks_min_refresh_interval_s
            )
            if (key is None or stale) and not recently:
                await self._refresh()
                key = self._lookup(kid)
        if key is None:
            raise TokenRejected("admin token signed with an unknown key", "unknown_kid")
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is not None:
            return self._keys.get(kid)
        # A token without kid is only unambiguous when the issuer publishes a single key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh(self) -> None:
        try:
            url = self._jwks_url or await self._discover()
            self._jwks_url = url
            response = await self._http().get(url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            # Keep serving the keys we have: a flaky issuer must not lock operators out.
            log_auth_failure("jwks_fetch_failed", error=str(exc))
            self._fetched_at = time.monotonic()
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []) if isinstance(document, Mapping) else []:
            if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
                continue
            try:
                parsed = jwt.PyJWK(dict(entry))
            except jwt.PyJWTError:
                continue
            if parsed.algorithm_name in ASYMMETRIC_ALGORITHMS:
                keys[str(entry.get("kid", ""))] = parsed
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _discover(self) -> str:
        issuer = (self._config.oidc_issuer or "").rstrip("/")
        response = await self._http().get(f"{issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        document = response.json()
        url = document.get("jwks_uri") if isinstance(document, Mapping) else None
        if not isinstance(url, str):
            raise ValueError("openid-configuration has no jwks_uri")
        return url


class AdminJWTVerifier:
    """Turns a bearer token into an AdminPrincipal, or raises a 401/403 CrossLogicError."""

    def __init__(self, config: AdminAuthConfig, *, http_client: httpx.AsyncClient | None = None) -> None:
        config.validate_for_startup()
        self._config = config
        self._jwks = JwksKeyCache(config, http_client) if config.oidc_issuer else None

    async def aclose(self) -> None:
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str) -> AdminPrincipal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenRejected("admin token is not a well-formed JWT", "malformed") from exc
        alg = header.get("alg")
        key: Any
        # None: not checked by PyJWT. The OIDC cache exists only with an issuer; an audience is
        # required at start-up (validate_for_startup), and a token's `aud` without one is refused.
        issuer: str | None
        audience: str | None
        if alg == "HS256" and self._config.hs256_secret is not None:
            key = self._config.hs256_secret.get_secret_value().encode()
            issuer, audience = self._config.hs256_issuer, self._config.hs256_audience
        elif alg in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            kid = header.get("kid")
            jwk = await self._jwks.get(kid if isinstance(kid, str) else None)
            if jwk.algorithm_name != alg:
                raise TokenRejected("admin token algorithm does not match its key", "bad_alg")
            key = jwk.key
            issuer, audience = self._config.oidc_issuer, self._config.oidc_audience
        else:
            # Covers `none`, HS256 tokens when only OIDC is trusted (key confusion) and anything else.
            raise TokenRejected(f"admin token algorithm {alg!r} is not accepted", "bad_alg")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=issuer,
                audience=audience,
                leeway=self._config.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("admin token has expired", "expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("admin token audience is not accepted", "wrong_audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenRejected("admin token issuer is not accepted", "wrong_issuer") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("admin token signature is invalid", "bad_signature") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected(f"admin token is invalid: {exc}", "invalid") from exc
        lifetime = claims["exp"] - claims["iat"]  # both checked to be integers by PyJWT
        if lifetime > self._config.max_lifetime_s:
            raise TokenRejected(
                f"admin token lifetime (exp - iat = {lifetime} s) exceeds the maximum of "
                f"{self._config.max_lifetime_s:g} s",
                "lifetime_too_long",
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenRejected("admin token has no subject", "no_subject")
        return AdminPrincipal(subject=subject, scopes=parse_scopes(claims))

    @staticmethod
    def authorize(principal: AdminPrincipal, scope: AdminScope) -> None:
        if not principal.allows(scope):
            raise PermissionDeniedError(
                f"admin token lacks the {scope.value!r} scope", code="insufficient_scope"
            )


def parse_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", "")
    if isinstance(raw, str):
        return frozenset(raw.split())
    # Some issuers emit a list (`scp`-style) under `scope`; accept it rather than silently drop it.
    if isinstance(raw, list):
        return frozenset(str(item) for item in raw)
    return frozenset()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header, or a 401."""
    if not authorization:
        raise TokenRejected("missing admin bearer token (Authorization: Bearer <jwt>)", "missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("Authorization header must be 'Bearer <jwt>'", "malformed_header")
    return token.strip()
