"""Schema-driven cases: schemathesis turns each operation of the served OpenAPI document into
Hypothesis strategies (bodies, path and query parameters that fit the schema, and ones that do not);
`fuzz_operation` draws a fixed, reproducible number of them and sends each to the stack.

Every property violation is collected rather than raised, so one run reports all of them and no
budget goes to shrinking; the suite asserts on the tally at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.fuzz.oracle import Tally

# The real engines must answer fast and never queue: generated limits are clamped to these.
MAX_TOKENS = 4
MAX_N = 2
TIMEOUT_S = 60.0
_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
_HEALTH_CHECKS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large, HealthCheck.large_base_example]

Tamer = Callable[[Any, st.DataObject], None]


def clamp_generation(body: dict[str, Any]) -> None:
    """Keep a schema-valid generation body cheap: a few tokens, at most two choices."""
    for name in _LIMIT_FIELDS:
        if isinstance(body.get(name), int) and not isinstance(body[name], bool):
            body[name] = max(1, min(body[name], MAX_TOKENS))
    if not any(isinstance(body.get(name), int) for name in _LIMIT_FIELDS):
        body["max_tokens"] = MAX_TOKENS  # absent or null: the engine would fill its context
    if isinstance(body.get("n"), int) and not isinstance(body["n"], bool):
        body["n"] = max(1, min(body["n"], MAX_N))


def describe(kwargs: dict[str, Any]) -> str:
    """One line that reproduces a request (method, URL, query, the headers we chose, body)."""
    body = kwargs.get("json", kwargs.get("data"))
    shown = json.dumps(body, ensure_ascii=True)[:400] if "json" in kwargs else repr(body)[:400]
    query = kwargs.get("params") or ""
    return f"{kwargs['method']} {kwargs['url']}{'?' + str(query) if query else ''} body={shown}"


def fuzz_operation(
    operation: Any,
    *,
    mode: GenerationMode,
    examples: int,
    base_url: str,
    headers: dict[str, str],
    tally: Tally,
    session: requests.Session,
    tame: Tamer | None = None,
) -> int:
    """Send `examples` generated cases of `operation` (fewer when the schema allows fewer); returns
    how many were sent."""
    sent = 0

    @settings(
        max_examples=examples, derandomize=True, database=None, deadline=None,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=_HEALTH_CHECKS,
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        nonlocal sent
        if tame is not None:
            tame(case, data)
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
        kwargs.pop("cookies", None)
        # Negative cases may drop the credentials; bad credentials are not what this suite probes
        # (failed authentication is throttled per address, and the raw suite has its few cases).
        kwargs["headers"].update(headers)
        what = f"[{mode.value}] {describe(kwargs)}"
        try:
            response = session.request(**kwargs, timeout=TIMEOUT_S)
        except requests.RequestException as exc:  # the server hung up: as bad as a 5xx
            tally.statuses[0] += 1
            tally.violations.append(f"no answer ({exc!r}) for {what}")
            return
        sent += 1
        tally.check(what, operation.path, response.status_code, response.headers, response.content, operation.label)

    try:
        run()
    except Unsatisfiable:  # nothing in the operation can be made invalid (e.g. GET /health)
        pass
    return sent
