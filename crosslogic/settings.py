"""Process settings read from the environment (secrets and endpoints; never from serve_config.yaml).

Application shape (models, replicas, limits) lives in `crosslogic.config`; this module only holds
what differs per machine or per deployment and must not be committed: URLs and secrets.

Secrets are `SecretStr`/`SecretBytes` (connection URLs `SecretURL`, shown with the password masked):
reveal them with `get_secret_value()` only where they are used, so no repr, log line or error
message carries one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

from pydantic import Field, SecretBytes, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from crosslogic.errors import ConfigError
from crosslogic.regions.config import MASTER_SECRET_ENV
from crosslogic.secret_url import SecretURL

MIN_REGION_MASTER_SECRET_BYTES = 32


def parse_region_master_secret(text: str) -> bytes:
    """The regions' master secret (hex, 32+ bytes), or ConfigError naming the variable."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"{MASTER_SECRET_ENV} must be hex (e.g. `openssl rand -hex 32`)") from None
    if len(secret) < MIN_REGION_MASTER_SECRET_BYTES:
        raise ConfigError(
            f"{MASTER_SECRET_ENV} is {len(secret)} bytes; it must be at least {MIN_REGION_MASTER_SECRET_BYTES} "
            "(64 hex characters, e.g. `openssl rand -hex 32`)"
        )
    return secret


def default_home() -> Path:
    return Path(os.environ.get("CROSSLOGIC_HOME") or Path.home() / ".crosslogic").expanduser()


def _env(name: str, **kwargs: Any) -> Any:
    """A field read from the environment variable `name` (its validation alias)."""
    return Field(validation_alias=name, **kwargs)


class Settings(BaseSettings):
    """`Settings.from_env()` reads the environment; `Settings(...)` holds exactly what it is given.

    Constructing directly never reads the environment (only `home`'s default does, as always): tests
    and callers that build one get the values they passed, whatever the process's environment holds.
    """

    model_config = SettingsConfigDict(
        # Variable names are exact: `HOME` must never be read as `home`.
        case_sensitive=True,
        # `FOO=` means unset, as before.
        env_ignore_empty=True,
        # Settings(home=...) by field name; the environment by variable name.
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    home: Path = _env("CROSSLOGIC_HOME", default_factory=default_home)
    # None -> embedded PostgreSQL under `home / "pgdata"`.
    database_url: SecretURL | None = _env("DATABASE_URL", default=None)
    # None -> in-cluster rate-limit state (named Ray actor), single cluster only.
    redis_url: SecretURL | None = _env("REDIS_URL", default=None)
    billing_enabled: bool = _env("BILLING_ENABLED", default=False)
    stripe_api_key: SecretStr | None = _env("STRIPE_API_KEY", default=None)
    stripe_webhook_secret: SecretStr | None = _env("STRIPE_WEBHOOK_SECRET", default=None)
    admin_jwt_secret: SecretStr | None = _env("CROSSLOGIC_ADMIN_JWT_SECRET", default=None)
    admin_oidc_issuer: str | None = _env("CROSSLOGIC_ADMIN_OIDC_ISSUER", default=None)
    admin_oidc_audience: str | None = _env("CROSSLOGIC_ADMIN_OIDC_AUDIENCE", default=None)
    admin_oidc_jwks_url: str | None = _env("CROSSLOGIC_ADMIN_OIDC_JWKS_URL", default=None)
    # Longest admin JWT lifetime (exp - iat) accepted, seconds.
    admin_jwt_max_lifetime_s: float = _env("CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", default=3600.0, gt=0)
    db_pool_min: int = _env("CROSSLOGIC_DB_POOL_MIN", default=1, ge=0)
    db_pool_max: int = _env("CROSSLOGIC_DB_POOL_MAX", default=10, ge=1)
    # Embedded PostgreSQL port when DATABASE_URL is unset; None picks a free one on first start.
    embedded_pg_port: int | None = _env("CROSSLOGIC_EMBEDDED_PG_PORT", default=None, ge=1, le=65535)
    # Every region's signing secret derives from it (crosslogic/regions/signing.py). None: regions
    # cannot be created and every heartbeat is refused (unknown_region).
    region_master_secret: SecretBytes | None = _env(MASTER_SECRET_ENV, default=None)

    @field_validator("home")
    @classmethod
    def _expand_home(cls, home: Path) -> Path:
        return home.expanduser()

    @field_validator("region_master_secret", mode="before")
    @classmethod
    def _parse_master_secret(cls, value: object) -> object:
        # The environment holds hex; ConfigError (not a ValidationError) keeps its one-line message.
        return parse_region_master_secret(value) if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: `from_env()` is the one reader of the environment (a test
        # building Settings(...) must not pick up the serve stack's BILLING_ENABLED=true).
        return (init_settings,)

    @classmethod
    def from_env(cls) -> Settings:
        """The process's settings; ConfigError (one line naming the variable) for a malformed value."""
        # Keyed by variable name. The source also tries each field's own name (validate_by_name);
        # those keys are dropped so only the documented variables count.
        values = {key: value for key, value in EnvSettingsSource(cls)().items() if key not in cls.model_fields}
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None

    def with_database_url(self, dsn: str) -> Settings:
        """A copy pointing at `dsn` (e.g. the embedded server's, once started)."""
        return self.model_copy(update={"database_url": SecretURL(dsn)})

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def pgdata_dir(self) -> Path:
        return self.home / "pgdata"


def _is_secret(annotation: object) -> bool:
    kinds = get_args(annotation) or (annotation,)
    return any(isinstance(kind, type) and issubclass(kind, (SecretStr, SecretBytes)) for kind in kinds)


# Fields whose value an error message must not echo.
_SECRET_FIELDS = frozenset(name for name, field in Settings.model_fields.items() if _is_secret(field.annotation))


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


def describe_errors(exc: ValidationError) -> str:
    """One line per ValidationError, joined: `BILLING_ENABLED='ture': Input should be a valid boolean...`."""
    by_alias = {env_name(name): name for name in Settings.model_fields}
    parts = []
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        field = by_alias.get(key, key)
        name = env_name(field) if field in Settings.model_fields else key
        shown = "" if field in _SECRET_FIELDS else f"={error['input']!r}"
        parts.append(f"{name}{shown}: {error['msg']}")
    return "; ".join(parts)
