"""API keys and the admin plane through the running ingress (two processes' worth of real parts)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.serve.conftest import CHAT_MODEL, EMBED_MODEL, ServeStack

MESSAGES = [{"role": "user", "content": "Hi"}]


def _chat(stack: ServeStack, key: str | None, *, raw_header: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    if raw_header is not None:
        headers = {"authorization": raw_header}
    return httpx.post(
        f"{stack.openai_base}/chat/completions",
        json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 2},
        headers=headers,
        timeout=60,
    )


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer sk-cl-not-a-real-key-000000000000000000000000", "Basic abc", "sk-cl-no-scheme"]
)
def test_missing_or_unknown_key_is_401(serve_stack: ServeStack, header: str | None) -> None:
    resp = _chat(serve_stack, None, raw_header=header)
    assert resp.status_code == 401
    error = resp.json()["error"]
    assert error["code"] == "invalid_api_key"
    secret = (header or "").split()[-1] if header else ""
    if len(secret) > 8:
        assert secret not in resp.text  # the secret is never echoed


def test_openai_client_raises_authentication_error(serve_stack: ServeStack) -> None:
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key="sk-cl-wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()


def test_revocation_takes_effect_within_a_second(serve_stack: ServeStack) -> None:
    _, key_id, secret = serve_stack.create_tenant_and_key("revoke-me")
    assert _chat(serve_stack, secret).status_code == 200  # now cached in the ingress
    revoked = serve_stack.admin("POST", f"/keys/{key_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    while _chat(serve_stack, secret).status_code != 401:
        assert time.monotonic() - started < 1.0, "revoked key still accepted after 1 s"
        time.sleep(0.05)
    # One second after the revocation every ingress replica refuses it (the proxy spreads these
    # requests over both replicas).
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    assert {_chat(serve_stack, secret).status_code for _ in range(12)} == {401}


def test_scoped_key_sees_only_its_models(serve_stack: ServeStack) -> None:
    _, _, secret = serve_stack.create_tenant_and_key("embed-only", scopes=[EMBED_MODEL])
    with openai.OpenAI(base_url=serve_stack.openai_base, api_key=secret, max_retries=0) as client:
        assert {m.id for m in client.models.list().data} == {EMBED_MODEL}
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
        assert client.embeddings.create(model=EMBED_MODEL, input="ok").data


def test_suspended_tenant_is_refused(serve_stack: ServeStack) -> None:
    tenant_id, _, secret = serve_stack.create_tenant_and_key("suspend-me")
    assert _chat(serve_stack, secret).status_code == 200
    assert serve_stack.admin("POST", f"/tenants/{tenant_id}/suspend").status_code == 200
    started = time.monotonic()
    while (resp := _chat(serve_stack, secret)).status_code != 403:
        assert time.monotonic() - started < 1.0, "suspended tenant still served after 1 s"
        time.sleep(0.05)
    assert resp.json()["error"]["code"] == "tenant_suspended"
    assert serve_stack.admin("POST", f"/tenants/{tenant_id}/reactivate").status_code == 200


def test_admin_api_requires_a_token_and_audits(serve_stack: ServeStack) -> None:
    assert httpx.get(f"{serve_stack.base_url}/admin/v1/tenants").status_code == 401
    audit = serve_stack.admin("GET", "/audit?limit=100")
    assert audit.status_code == 200, audit.text
    actions = {row["action"] for row in audit.json()["data"]}
    assert {"tenant.create", "key.create"} <= actions
