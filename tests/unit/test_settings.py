"""crosslogic.settings: the environment parsed by pydantic-settings, defaults, one-line errors, masked secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from crosslogic.cli.main import main
from crosslogic.errors import ConfigError
from crosslogic.secret_url import SecretURL, redact_url
from crosslogic.settings import Settings, describe_errors, env_name

DSN = "postgresql://app:pg-pass-123@db.internal:5432/crosslogic"
STRIPE_KEY = "sk_live_do_not_print"
WEBHOOK_SECRET = "whsec_do_not_print"
ADMIN_SECRET = "admin-secret-do-not-print-" + "x" * 20
MASTER_HEX = "ef" * 32
REDIS = "redis://:redis-pass-456@cache.internal:6379/0"
SECRETS = ("pg-pass-123", STRIPE_KEY, WEBHOOK_SECRET, ADMIN_SECRET, MASTER_HEX, "efef", "redis-pass-456")

ALL_VARIABLES = (
    "CROSSLOGIC_HOME", "DATABASE_URL", "REDIS_URL", "BILLING_ENABLED", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET",
    "CROSSLOGIC_ADMIN_JWT_SECRET", "CROSSLOGIC_ADMIN_OIDC_ISSUER", "CROSSLOGIC_ADMIN_OIDC_AUDIENCE",
    "CROSSLOGIC_ADMIN_OIDC_JWKS_URL", "CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", "CROSSLOGIC_DB_POOL_MIN",
    "CROSSLOGIC_DB_POOL_MAX", "CROSSLOGIC_EMBEDDED_PG_PORT", "CROSSLOGIC_REGION_MASTER_SECRET",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting in the environment but a private CROSSLOGIC_HOME (the serve stack may have set some)."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CROSSLOGIC_HOME", str(tmp_path / "home"))
    return monkeypatch


def _full_env(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", DSN)
    env.setenv("REDIS_URL", REDIS)
    env.setenv("BILLING_ENABLED", "true")
    env.setenv("STRIPE_API_KEY", STRIPE_KEY)
    env.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    env.setenv("CROSSLOGIC_ADMIN_JWT_SECRET", ADMIN_SECRET)
    env.setenv("CROSSLOGIC_ADMIN_OIDC_ISSUER", "https://idp.example.com")
    env.setenv("CROSSLOGIC_ADMIN_OIDC_AUDIENCE", "crosslogic")
    env.setenv("CROSSLOGIC_ADMIN_OIDC_JWKS_URL", "https://idp.example.com/jwks")
    env.setenv("CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", "86400")
    env.setenv("CROSSLOGIC_DB_POOL_MIN", "2")
    env.setenv("CROSSLOGIC_DB_POOL_MAX", "20")
    env.setenv("CROSSLOGIC_EMBEDDED_PG_PORT", "54321")
    env.setenv("CROSSLOGIC_REGION_MASTER_SECRET", MASTER_HEX)


def test_every_variable_is_parsed(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _full_env(clean_env)
    settings = Settings.from_env()
    assert settings.home == tmp_path / "home"
    assert settings.database_url is not None and settings.database_url.get_secret_value() == DSN
    assert settings.redis_url is not None and settings.redis_url.get_secret_value() == REDIS
    assert settings.billing_enabled is True
    assert settings.stripe_api_key == SecretStr(STRIPE_KEY)
    assert settings.stripe_webhook_secret == SecretStr(WEBHOOK_SECRET)
    assert settings.admin_jwt_secret == SecretStr(ADMIN_SECRET)
    assert (settings.admin_oidc_issuer, settings.admin_oidc_audience, settings.admin_oidc_jwks_url) == (
        "https://idp.example.com", "crosslogic", "https://idp.example.com/jwks")
    assert settings.admin_jwt_max_lifetime_s == 86400.0
    assert (settings.db_pool_min, settings.db_pool_max, settings.embedded_pg_port) == (2, 20, 54321)
    assert settings.region_master_secret is not None
    assert settings.region_master_secret.get_secret_value() == bytes.fromhex(MASTER_HEX)
    assert {env_name(field) for field in Settings.model_fields} == set(ALL_VARIABLES)


def test_defaults_and_empty_means_unset(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ALL_VARIABLES[1:]:
        clean_env.setenv(name, "")  # `FOO=` is unset, as in a shell
    settings = Settings.from_env()
    assert settings.home == tmp_path / "home"
    assert settings.models_dir == tmp_path / "home" / "models"
    assert settings.pgdata_dir == tmp_path / "home" / "pgdata"
    assert settings.database_url is None and settings.redis_url is None
    assert settings.billing_enabled is False
    assert settings.stripe_api_key is None and settings.stripe_webhook_secret is None
    assert settings.admin_jwt_secret is None and settings.admin_oidc_issuer is None
    assert settings.admin_jwt_max_lifetime_s == 3600.0
    assert (settings.db_pool_min, settings.db_pool_max, settings.embedded_pg_port) == (1, 10, None)
    assert settings.region_master_secret is None


def test_home_defaults_under_the_users_home(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.delenv("CROSSLOGIC_HOME")
    clean_env.setenv("HOME", str(tmp_path / "user"))  # never read as `home` itself
    assert Settings.from_env().home == tmp_path / "user" / ".crosslogic"
    clean_env.setenv("CROSSLOGIC_HOME", "~/elsewhere")
    assert Settings.from_env().home == tmp_path / "user" / "elsewhere"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("yes", True), ("ON", True), ("false", False), ("0", False), ("no", False)],
)
def test_billing_enabled_words(clean_env: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    clean_env.setenv("BILLING_ENABLED", raw)
    assert Settings.from_env().billing_enabled is expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        # Once silently false; now refused.
        ("BILLING_ENABLED", "ture", "BILLING_ENABLED='ture': Input should be a valid boolean"),
        ("CROSSLOGIC_DB_POOL_MAX", "ten", "CROSSLOGIC_DB_POOL_MAX='ten': Input should be a valid integer"),
        ("CROSSLOGIC_DB_POOL_MAX", "0", "CROSSLOGIC_DB_POOL_MAX='0': Input should be greater than or equal to 1"),
        ("CROSSLOGIC_EMBEDDED_PG_PORT", "70000", "CROSSLOGIC_EMBEDDED_PG_PORT='70000': Input should be less"),
        ("CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S", "-1", "CROSSLOGIC_ADMIN_JWT_MAX_LIFETIME_S='-1': Input should be"),
        ("CROSSLOGIC_REGION_MASTER_SECRET", "zz", "CROSSLOGIC_REGION_MASTER_SECRET must be hex"),
    ],
)
def test_a_malformed_value_is_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    clean_env.setenv(name, raw)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_cli_says_what_is_wrong_in_one_line(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("BILLING_ENABLED", "ture")
    assert main(["admin", "token"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crosslogic: BILLING_ENABLED='ture': Input should be a valid boolean") and err.count("\n") == 1


def test_a_malformed_secret_is_not_echoed() -> None:
    # From the environment every value is text, which any secret field accepts; a caller passing the
    # wrong type is the way to a refused secret. Its value stays out of the message.
    with pytest.raises(ValidationError) as invalid:
        Settings(stripe_api_key=12345, billing_enabled="ture")  # type: ignore[arg-type]  # wrong types on purpose
    line = describe_errors(invalid.value)
    assert line == (
        "BILLING_ENABLED='ture': Input should be a valid boolean, unable to interpret input; "
        "STRIPE_API_KEY: Input should be a valid string"
    )


def test_no_secret_in_repr_str_dump_or_log(clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _full_env(clean_env)
    settings = Settings.from_env()
    with caplog.at_level(logging.INFO):
        logging.getLogger("test_settings").info("settings: %s / %r", settings, settings)
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump()), caplog.text]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text, (secret, text)
    # The URLs stay readable: which server and database, not the password.
    assert "postgresql://app:***@db.internal:5432/crosslogic" in repr(settings)
    assert "redis://:***@cache.internal:6379/0" in repr(settings)


def test_direct_construction_ignores_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _full_env(clean_env)
    settings = Settings(home=tmp_path, database_url=DSN)
    assert settings.home == tmp_path
    assert settings.database_url == SecretURL(DSN)
    assert settings.billing_enabled is False and settings.stripe_api_key is None and settings.redis_url is None
    assert settings.region_master_secret is None
    # Hex only from the environment's text; bytes as they are.
    assert Settings(region_master_secret=MASTER_HEX).region_master_secret is not None
    with pytest.raises(ConfigError, match="at least 32"):
        Settings(region_master_secret="ab" * 8)


def test_with_database_url_keeps_the_rest(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, db_pool_max=3).with_database_url(DSN)
    assert isinstance(settings.database_url, SecretURL)
    assert settings.database_url.get_secret_value() == DSN
    assert (settings.home, settings.db_pool_max) == (tmp_path, 3)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p@h:1/d", "postgresql://u:***@h:1/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://h/d?sslmode=require", "postgresql://h/d?sslmode=require"),
        ("postgresql://u@h/d?password=p&sslmode=require", "postgresql://u@h/d?password=***&sslmode=require"),
        ("postgresql://u:p%40ss@[::1]:5432/d", "postgresql://u:***@[::1]:5432/d"),
        ("redis://:p@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:p@h:1:2:3/d", "postgresql://u:***@h:1:2:3/d"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert repr(SecretURL(url)) == f"SecretURL({shown!r})"
    assert SecretURL(url).get_secret_value() == url
