"""The `auth` section of the app config: the key authenticator's database timeouts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crosslogic.auth.config import KeyAuthConfig
from crosslogic.config import AppConfig

MODELS = [{"served_name": "m", "source": "s"}]


def test_defaults_are_the_documented_timeouts() -> None:
    config = AppConfig.model_validate({"models": MODELS}).auth
    assert (config.lookup_timeout_s, config.outage_wait_s, config.outage_grace_s) == (2.0, 0.25, 600.0)


def test_the_section_sets_them_and_refuses_nonsense() -> None:
    config = AppConfig.model_validate(
        {"models": MODELS, "auth": {"lookup_timeout_s": 1.5, "outage_wait_s": 0.1, "outage_grace_s": 60}}).auth
    assert (config.lookup_timeout_s, config.outage_wait_s, config.outage_grace_s) == (1.5, 0.1, 60.0)
    with pytest.raises(ValidationError, match="outage_wait_s"):
        KeyAuthConfig(lookup_timeout_s=0.5, outage_wait_s=1.0)
    with pytest.raises(ValidationError, match="extra"):
        AppConfig.model_validate({"models": MODELS, "auth": {"lookup_timeout": 1}})
