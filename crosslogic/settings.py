"""Process settings read from the environment (secrets and endpoints; never from serve_config.yaml).

Application shape (models, replicas, limits) lives in `crosslogic.config`; this module only holds
what differs per machine or per deployment and must not be committed: URLs and secrets.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def default_home() -> Path:
    return Path(os.environ.get("CROSSLOGIC_HOME") or Path.home() / ".crosslogic").expanduser()


class Settings(BaseModel):
    home: Path = Field(default_factory=default_home)
    # None -> embedded PostgreSQL under `home / "pgdata"`.
    database_url: str | None = None
    # None -> in-cluster rate-limit state (named Ray actor), single cluster only.
    redis_url: str | None = None
    billing_enabled: bool = False
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    admin_jwt_secret: str | None = None
    admin_oidc_issuer: str | None = None
    admin_oidc_audience: str | None = None
    admin_oidc_jwks_url: str | None = None
    db_pool_min: int = 1
    db_pool_max: int = 10
    # Embedded PostgreSQL port when DATABASE_URL is unset; None picks a free one on first start.
    embedded_pg_port: int | None = None

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            home=default_home(),
            database_url=env.get("DATABASE_URL") or None,
            redis_url=env.get("REDIS_URL") or None,
            billing_enabled=_env_bool("BILLING_ENABLED", False),
            stripe_api_key=env.get("STRIPE_API_KEY") or None,
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
            admin_jwt_secret=env.get("CROSSLOGIC_ADMIN_JWT_SECRET") or None,
            admin_oidc_issuer=env.get("CROSSLOGIC_ADMIN_OIDC_ISSUER") or None,
            admin_oidc_audience=env.get("CROSSLOGIC_ADMIN_OIDC_AUDIENCE") or None,
            admin_oidc_jwks_url=env.get("CROSSLOGIC_ADMIN_OIDC_JWKS_URL") or None,
            db_pool_min=int(env.get("CROSSLOGIC_DB_POOL_MIN", "1")),
            db_pool_max=int(env.get("CROSSLOGIC_DB_POOL_MAX", "10")),
            embedded_pg_port=int(env["CROSSLOGIC_EMBEDDED_PG_PORT"])
            if env.get("CROSSLOGIC_EMBEDDED_PG_PORT")
            else None,
        )

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def pgdata_dir(self) -> Path:
        return self.home / "pgdata"
