"""Billing through the real stack: requests -> ledger -> detached billing actor -> (local) Stripe.

Stripe's cloud is the one part replaced, by the strict local server (tests/stripe_server), which
fails and stalls calls on purpose here. After recovery, what Stripe holds must equal the ledger for
every customer, meter and hour: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from tests.serve.conftest import CHAT_MODEL, METERS, ServeStack
from tests.stripe_server.server import sign_webhook

MESSAGES = [{"role": "user", "content": "Count to twenty."}]


def _billed_tenant(stack: ServeStack, name: str) -> tuple[str, str, str]:
    customer = f"cus_{secrets.token_hex(6)}"
    stack.stripe.add_customer(customer)
    tenant_id, _, secret = stack.create_tenant_and_key(name)
    resp = stack.admin("PATCH", f"/tenants/{tenant_id}", {"stripe_customer_id": customer})
    assert resp.status_code == 200, resp.text
    return tenant_id, customer, secret


async def _ledger_totals(database_url: str, tenant_id: str, customer: str) -> dict[tuple[str, str, int], Decimal]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """
            SELECT extract(epoch FROM date_trunc('hour', created_at))::bigint AS hour,
                   sum(prompt_tokens) AS input, sum(completion_tokens) AS output
            FROM usage_ledger WHERE tenant_id = $1 GROUP BY 1
            """,
            tenant_id,
        )
    finally:
        await conn.close()
    totals: dict[tuple[str, str, int], Decimal] = {}
    for row in rows:
        for meter, value in ((METERS[0], row["input"]), (METERS[1], row["output"])):
            if value:
                totals[(customer, meter, int(row["hour"]))] = Decimal(value)
    return totals


def _stripe_totals(stack: ServeStack, customer: str) -> dict[tuple[str, str, int], Decimal]:
    return {k: v for k, v in stack.stripe.snapshot().items() if k[0] == customer}


async def _traffic(stack: ServeStack, secret: str, n: int, tag: str) -> None:
    async with httpx.AsyncClient(timeout=120, headers={"authorization": f"Bearer {secret}"}) as http:

        async def one(i: int) -> None:
            body: dict[str, Any] = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 8 + i % 5}
            # Named so that a ledger row that ended unlike its request did can be told apart.
            headers = {"x-client-request-id": f"{tag}-{i}-{'hangup' if i % 3 == 0 else 'whole'}"}
            if i % 3 == 0:
                # Long enough that a hang-up reaching the ingress late (seconds were measured through
                # HAProxy on a loaded stack; usually a few tokens) still ends it as cancelled; one that
                # never arrives would bill the whole answer as finished.
                body |= {"stream": True, "max_tokens": 1900, "ignore_eos": True}
                async with http.stream(
                    "POST", f"{stack.openai_base}/chat/completions", json=body, headers=headers
                ) as resp:
                    seen = 0
                    async for line in resp.aiter_lines():
                        seen += line.startswith("data: {")
                        if seen >= 4:
                            break  # the client hangs up mid-stream
                return
            resp = await http.post(f"{stack.openai_base}/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200, resp.text

        await asyncio.gather(*(one(i) for i in range(n)))


def _set_faults(stack: ServeStack, **faults: float) -> None:
    async def apply() -> None:
        for name, value in faults.items():
            setattr(stack.stripe.server.faults, name, value)

    stack.stripe.call(apply)


async def test_exactly_once_through_stripe_faults_and_actor_restart(
    serve_stack: ServeStack, database_url: str, ray_driver: Any
) -> None:
    tenant_id, customer, secret = _billed_tenant(serve_stack, "billed-e2e")
    # Stripe fails or stalls about half of the calls, some after storing the event.
    _set_faults(serve_stack, rate_500=0.25, rate_429=0.1, rate_timeout_after=0.1, rate_drop_after=0.05, slow_s=1.0)
    await _traffic(serve_stack, secret, 9, "before")
    billing = ray_driver.get_actor("crosslogic-billing", namespace="crosslogic")
    ray_driver.kill(billing, no_restart=False)  # mid-export: the actor comes back and resumes from PostgreSQL
    await _traffic(serve_stack, secret, 9, "after")
    await asyncio.sleep(2)
    _set_faults(serve_stack, rate_500=0.0, rate_429=0.0, rate_timeout_after=0.0, rate_drop_after=0.0)

    def reconciliation() -> list[dict[str, Any]]:
        report = serve_stack.admin("GET", "/billing/reconciliation?all_rows=true")
        assert report.status_code == 200, report.text
        return [r for r in report.json()["data"] if r["customer_id"] == customer]

    def settled(rows: list[dict[str, Any]]) -> bool:
        # An event Stripe stored while our call timed out stays pending until its retry is answered
        # "already exists": only then is the outbox settled too.
        return bool(rows) and all(r["unexplained"] == 0 and r["pending"] == 0 and r["dead"] == 0 for r in rows)

    deadline = time.monotonic() + 120
    ledger: dict[tuple[str, str, int], Decimal] = {}
    stripe: dict[tuple[str, str, int], Decimal] = {}
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        ledger = await _ledger_totals(database_url, tenant_id, customer)
        stripe = _stripe_totals(serve_stack, customer)
        rows = reconciliation()
        if ledger and stripe == ledger and settled(rows):
            break
        await asyncio.sleep(1)
    assert ledger, "no usage recorded"
    assert stripe == ledger, f"Stripe {stripe} != ledger {ledger}"
    assert settled(rows), rows
    assert {r["meter"] for r in rows} == {"input_tokens", "output_tokens"}
    assert all(r["ledger"] == r["delivered"] for r in rows)
    # Cancelled streams were metered too, as cancelled: each request has exactly one row, ended
    # as its client did (a hung-up stream that ran to its end would bill tokens nobody received).
    conn = await asyncpg.connect(database_url)
    try:
        ended = await conn.fetch(
            "SELECT client_request_id, request_id, status, completion_tokens, total_ms FROM usage_ledger"
            " WHERE tenant_id = $1 ORDER BY client_request_id",
            tenant_id,
        )
    finally:
        await conn.close()
    expected = {f"{tag}-{i}-{'hangup' if i % 3 == 0 else 'whole'}" for tag in ("before", "after") for i in range(9)}
    report = "\n".join(
        f"{r['client_request_id']} {r['request_id']} {r['status']} {r['completion_tokens']} tokens {r['total_ms']:.0f} ms"
        for r in ended
    )
    assert sorted(r["client_request_id"] for r in ended) == sorted(expected), report
    assert all(
        r["status"] == ("cancelled" if r["client_request_id"].endswith("hangup") else "finished") for r in ended
    ), report


def _webhook(stack: ServeStack, kind: str, customer: str) -> httpx.Response:
    payload = json.dumps(
        {
            "id": f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "type": kind,
            "created": int(time.time()),
            "data": {"object": {"object": "invoice", "customer": customer}},
        }
    ).encode()
    return httpx.post(
        f"{stack.base_url}/webhooks/stripe",
        content=payload,
        headers={"stripe-signature": sign_webhook(payload, stack.webhook_secret), "content-type": "application/json"},
        timeout=30,
    )


def _status_after(stack: ServeStack, secret: str, expected: int, timeout_s: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        resp = httpx.post(
            f"{stack.openai_base}/chat/completions",
            json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 2},
            headers={"authorization": f"Bearer {secret}"},
            timeout=60,
        )
        if resp.status_code == expected or time.monotonic() > deadline:
            return resp
        time.sleep(0.3)


def test_payment_webhooks_suspend_and_reactivate(serve_stack: ServeStack) -> None:
    _, customer, secret = _billed_tenant(serve_stack, "billed-webhooks")
    assert _status_after(serve_stack, secret, 200).status_code == 200
    assert _webhook(serve_stack, "invoice.payment_failed", customer).status_code == 200
    # Suspended by billing: OpenAI's 429 insufficient_quota (an operator's suspension is a 403).
    suspended = _status_after(serve_stack, secret, 429)
    assert suspended.status_code == 429 and suspended.json()["error"]["code"] == "insufficient_quota"
    assert suspended.headers.get("x-should-retry") == "false"
    time.sleep(1.1)  # Stripe's `created` has one-second resolution; events apply in order
    assert _webhook(serve_stack, "invoice.paid", customer).status_code == 200
    assert _status_after(serve_stack, secret, 200).status_code == 200


def test_webhook_with_bad_signature_is_refused(serve_stack: ServeStack) -> None:
    payload = b'{"id": "evt_forged", "type": "invoice.paid", "created": 1, "data": {"object": {}}}'
    resp = httpx.post(
        f"{serve_stack.base_url}/webhooks/stripe",
        content=payload,
        headers={"stripe-signature": sign_webhook(payload, "whsec_wrong"), "content-type": "application/json"},
    )
    assert resp.status_code == 400
