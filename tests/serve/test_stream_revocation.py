"""Revoking a key or suspending a tenant ends its streams in progress within a second, through the
real stack, with an OpenAI error the official client raises, and what was served is metered."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.serve.conftest import CHAT_MODEL, ServeStack
from tests.serve.test_metering_end_to_end import _usage_row


@pytest.mark.parametrize("change", ["revoke key", "suspend tenant"])
async def test_revocation_ends_a_running_stream_within_a_second(
    serve_stack: ServeStack, database_url: str, change: str
) -> None:
    tenant_id, key_id, secret = serve_stack.create_tenant_and_key(f"live-stream-{change.split()[0]}")
    client = openai.AsyncOpenAI(base_url=serve_stack.openai_base, api_key=secret, max_retries=0, timeout=120)
    stream = await client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        max_tokens=1500,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    request_id = stream.response.headers["x-request-id"]
    chunks = 0
    changed_at: float | None = None
    with pytest.raises(openai.APIError) as ended:
        async for _ in stream:
            chunks += 1
            if chunks == 5:
                path = f"/keys/{key_id}/revoke" if change == "revoke key" else f"/tenants/{tenant_id}/suspend"
                answer = await asyncio.to_thread(serve_stack.admin, "POST", path)
                assert answer.status_code == 200, answer.text
                changed_at = time.monotonic()
    ended_after = time.monotonic() - (changed_at or 0)
    await client.close()

    assert changed_at is not None
    print(f"{change}: stream ended {ended_after * 1000:.0f} ms after the admin call returned, {chunks} chunks")
    assert ended_after < 1.0, f"stream ended {ended_after:.2f}s after the {change}"
    assert chunks < 1500
    expected_code = "invalid_api_key" if change == "revoke key" else "tenant_suspended"
    assert ended.value.code == expected_code, ended.value
    row = await _usage_row(database_url, request_id, timeout_s=10)
    # What was served is metered: the engine's count, at least what reached the client.
    assert row["status"] == "cancelled"
    # (the first chunk carries only the role)
    assert row["prompt_tokens"] > 0 and chunks - 1 <= row["completion_tokens"] < 1500
