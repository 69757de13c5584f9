"""Raw-bytes fuzz cases against the real stack (tests/fuzz/raw_cases.py): depth, size around the body
limit, encodings, numbers, duplicate keys, NUL bytes and lone surrogates, hostile header values.
Never a 5xx, every 4xx in OpenAI's error shape, the expected status where a case has one, and no
usage row for a refused request."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest

from tests.fuzz.oracle import ErrorLogWatch, Tally, check_ledger
from tests.fuzz.raw_cases import all_cases
from tests.fuzz.raw_http import build_request, send_raw
from tests.serve.conftest import CHAT_MODEL, ServeStack


@pytest.fixture(scope="module")
def raw_tenant(serve_stack: ServeStack) -> tuple[str, str]:
    tenant_id, _, secret = serve_stack.create_tenant_and_key("fuzz-raw")
    return tenant_id, secret


async def test_raw_cases(
    serve_stack: ServeStack, raw_tenant: tuple[str, str], database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = urlsplit(serve_stack.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    limit = int(serve_stack.config["applications"][0]["args"]["ingress"]["max_body_bytes"])
    cases = all_cases(CHAT_MODEL, raw_tenant[1], limit)
    assert sum(case.bad_key for case in cases) <= 8  # failed authentication is throttled per address
    tally = Tally("raw fuzz")
    started, logs = time.monotonic(), ErrorLogWatch(serve_stack.cluster.temp_dir)
    for case in cases:
        request = build_request(case.method, case.path, f"{host}:{port}", case.headers, case.body, content_length=case.content_length)
        response = await send_raw(host, port, request, half_close=case.half_close)
        what = f"{case.name!r} ({request[:160]!r}...)"
        if response.status == 0:
            tally.statuses[0] += 1
            if not case.half_close:
                tally.violations.append(f"no answer for {what}: {response.body[:200]!r}")
            continue
        if case.framing and 400 <= response.status < 500:
            tally.statuses[response.status] += 1  # refused by the HTTP server itself, in its words
        else:
            tally.check(what, case.path.split("?")[0], response.status, response.headers, response.body, case.name)
        if case.expect is not None and response.status not in case.expect:
            tally.violations.append(
                f"{response.status} (expected {sorted(case.expect)}) for {what}: {response.body[:200]!r}"
            )
    with capsys.disabled():
        print(f"\n{tally.summary()} in {time.monotonic() - started:.1f}s")
        print(f"  4xx by code and param: {tally.top_reasons()}")
    problems = await check_ledger(database_url, raw_tenant[0], tally)
    errors = logs.new_errors()
    assert not tally.violations and not problems and not errors, "\n".join([tally.report(), *problems[:20], *errors[:20]])
