"""Prefix-cache namespaces: the salt each scope gives, the client's own salt refused, vLLM accepting ours."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pydantic import TypeAdapter

from crosslogic.api.cache_salt import cache_salt, salted_body
from crosslogic.auth.context import AuthContext
from crosslogic.config import AppConfig
from crosslogic.engine.vllm_engine import VLLMEngine
from crosslogic.errors import InvalidRequestError
from crosslogic.tenants.models import Limits

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def auth(tenant: uuid.UUID | None = None, key: uuid.UUID | None = None) -> AuthContext:
    return AuthContext(
        tenant_id=tenant or uuid.uuid4(), tenant_name="t", key_id=key or uuid.uuid4(), key_name="k",
        key_prefix="sk-cl-x", scopes=frozenset(), key_limits=Limits(), tenant_limits=Limits(),
        stripe_customer_id=None,
    )


def test_tenant_scope_shares_within_a_tenant_only() -> None:
    tenant = uuid.uuid4()
    a1, a2, b = auth(tenant), auth(tenant), auth()
    assert cache_salt("tenant", a1) == cache_salt("tenant", a2)  # two keys of one tenant
    assert cache_salt("tenant", a1) != cache_salt("tenant", b)


def test_key_scope_separates_keys_of_one_tenant() -> None:
    tenant = uuid.uuid4()
    assert cache_salt("key", auth(tenant)) != cache_salt("key", auth(tenant))
    one = auth(tenant)
    assert cache_salt("key", one) == cache_salt("key", one)
    # A key's namespace is never a tenant's, even were the ids equal.
    same = uuid.uuid4()
    assert cache_salt("key", auth(same, same)) != cache_salt("tenant", auth(same, same))


def test_shared_scope_sends_no_salt() -> None:
    body = salted_body(dict(CHAT), "shared", auth())
    assert "cache_salt" not in body
    # Every tenant's request is then identical for the engine: their prefixes are shared.
    assert salted_body(dict(CHAT), "shared", auth()) == body


def test_salt_is_set_on_a_copy() -> None:
    original = dict(CHAT)
    body = salted_body(original, "tenant", auth())
    assert body["cache_salt"].startswith("tenant-") and "cache_salt" not in original


@pytest.mark.parametrize("scope", ["tenant", "key", "shared"])
@pytest.mark.parametrize("value", ["tenant-0123", "", None, 7])
def test_client_salt_is_refused_whatever_the_scope(scope: Any, value: Any) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        salted_body({**CHAT, "cache_salt": value}, scope, auth())
    error = caught.value
    assert error.status_code == 400 and error.param == "cache_salt"
    assert error.code == "unsupported_parameter"


def test_default_scope_is_tenant_and_unknown_scope_is_refused() -> None:
    base = {"models": [{"served_name": "m", "source": "s"}]}
    assert AppConfig.model_validate(base).models[0].prefix_cache_scope == "tenant"
    with pytest.raises(ValueError):
        AppConfig.model_validate({"models": [{"served_name": "m", "source": "s", "prefix_cache_scope": "all"}]})


# Importing vLLM imports torch, whose import-time deprecations are not ours to fix.
VLLM_IMPORT = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@VLLM_IMPORT
@pytest.mark.parametrize("scope", ["tenant", "key"])
def test_vllm_request_models_accept_our_salt(scope: Any) -> None:
    # The installed vLLM's own request models: chat, completions and embeddings all carry it through.
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

    who = auth()
    salt = cache_salt(scope, who)
    assert ChatCompletionRequest.model_validate(salted_body(dict(CHAT), scope, who)).cache_salt == salt
    completion = {"model": "m", "prompt": "hi"}
    assert CompletionRequest.model_validate(salted_body(completion, scope, who)).cache_salt == salt
    embedding = TypeAdapter(EmbeddingRequest).validate_python(salted_body({"model": "m", "input": "hi"}, scope, who))
    assert embedding.cache_salt == salt


@VLLM_IMPORT
def test_engine_reports_cached_prompt_tokens() -> None:
    # cached_tokens in usage is how a client (and tests/serve/test_prefix_cache_isolation.py) sees
    # a prefix-cache hit; vLLM reports it only when asked.
    config = AppConfig.model_validate(
        {"models": [{"served_name": "m", "source": "s", "prefix_cache_scope": "key"}]}
    ).models[0]
    args = VLLMEngine(config, "/nonexistent")._engine_args()
    assert args.enable_prompt_tokens_details is True
