"""Failed authentication through the real stack (HAProxy -> ingress replicas): 429 after the budget.

The suite's config trusts one X-Forwarded-For hop (tests/serve/conftest.py), so each test here
speaks from addresses of its own and never spends the loopback address's budget that the rest of
the suite's bad-key tests run under. Budgets are the shipped defaults: 20 failures per minute per
address and per key prefix, per ingress replica (two here), so the first 429 comes after 20 to 40
failures.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve.conftest import ServeStack

BUDGET = 20
REPLICAS = 2
WAVE = 5


def models(stack: ServeStack, secret: str, client: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"}
    if client is not None:
        headers["x-forwarded-for"] = client
    return httpx.get(f"{stack.openai_base}/models", headers=headers, timeout=30)


def until_throttled(stack: ServeStack, secrets_and_clients: list[tuple[str, str]]) -> list[httpx.Response]:
    """The attempts in waves of a few at once, until one is refused with 429: the refusals before it,
    then the 429. Waves, not one by one: the budget is per minute, and on a loaded CI machine 41
    sequential bad-key requests took long enough for the first failures to leave the window (all 401)."""
    responses: list[httpx.Response] = []
    with ThreadPoolExecutor(max_workers=WAVE) as pool:
        for start in range(0, len(secrets_and_clients), WAVE):
            wave = secrets_and_clients[start:start + WAVE]
            answers = list(pool.map(lambda sc: models(stack, *sc), wave))
            throttled = [r for r in answers if r.status_code == 429]
            responses += [r for r in answers if r.status_code != 429] + throttled[:1]
            if throttled:
                break
    return responses


def assert_throttled(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "too_many_failed_auth"
    assert 1 <= int(response.headers["retry-after"]) <= 60 / BUDGET
    assert 0 < int(response.headers["retry-after-ms"]) <= 60_000 / BUDGET
    assert "Traceback" not in response.text
    return error


def test_bad_keys_from_one_client_get_429_with_retry_after(serve_stack: ServeStack) -> None:
    attacker = "198.51.100.77"
    attempts = [(f"sk-cl-{secrets.token_urlsafe(32)}", attacker) for _ in range(BUDGET * REPLICAS + 1)]
    responses = until_throttled(serve_stack, attempts)
    refused = [r.status_code for r in responses[:-1]]
    assert set(refused) == {401} and BUDGET <= len(refused) <= BUDGET * REPLICAS, refused
    assert_throttled(responses[-1])
    # The suite's own key, from its own address, is untouched.
    assert models(serve_stack, serve_stack.api_key).status_code == 200
    assert models(serve_stack, serve_stack.api_key, "192.0.2.44").status_code == 200


def test_spraying_a_keys_prefix_does_not_lock_its_owner_out(serve_stack: ServeStack) -> None:
    _, _, secret = serve_stack.create_tenant_and_key("auth-throttle-prefix")
    assert models(serve_stack, secret).status_code == 200
    prefix = secret[: len("sk-cl-") + 8]
    # One wrong secret per address: no address budget is spent, only the prefix's.
    attempts = [
        (f"{prefix}{secrets.token_urlsafe(32)}", f"203.0.113.{i}") for i in range(1, BUDGET * REPLICAS + 2)
    ]
    responses = until_throttled(serve_stack, attempts)
    assert {r.status_code for r in responses[:-1]} == {401}
    assert "prefix" in assert_throttled(responses[-1])["message"]
    # The right secret still passes, from the owner's address and from one of the spraying ones.
    assert models(serve_stack, secret).status_code == 200
    assert models(serve_stack, secret, "203.0.113.1").status_code == 200
