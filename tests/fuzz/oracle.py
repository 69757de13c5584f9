"""The property every fuzz case checks, and the tally a fuzz run reports.

Never a 5xx for anything a client sends (a documented, retryable 503 from an overloaded engine is
the one exception, and `/ready`'s 503 is its answer, not a failure); every 4xx in OpenAI's error
shape `{"error": {"message", "type", "param", "code"}}`; no traceback in any answer. What a refused
request must not write (usage rows) is checked against the database by the suites themselves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

# The engine's "at capacity, retry shortly" (deployments/gateway.py): genuinely retryable.
RETRYABLE_503_CODES = frozenset({"engine_overloaded"})
# Routes whose answer is a 5xx by design.
_STATUS_ROUTES = frozenset({"/ready"})
_ERROR_KEYS = {"message", "type", "param", "code"}
_LEAKS = ("Traceback (most recent call last)", 'File "/')


def error_shape_problem(body: bytes) -> str | None:
    """Why `body` is not an OpenAI error (None when it is one)."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:120]!r}"
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return f"not {{'error': {{...}}}}: {body[:200]!r}"
    error = data["error"]
    if set(error) != _ERROR_KEYS:
        return f"error keys {sorted(error)} != {sorted(_ERROR_KEYS)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "error.message is not a non-empty string"
    if not isinstance(error["type"], str):
        return "error.type is not a string"
    if not (error["param"] is None or isinstance(error["param"], str)):
        return f"error.param is {type(error['param']).__name__}, not a string or null"
    if not (error["code"] is None or isinstance(error["code"], str)):
        return f"error.code is {type(error['code']).__name__}, not a string or null"
    return None


def _error_code(body: bytes) -> str | None:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


# Where an answer runs the engine and leaves a usage row (POST only: each path is a POST route).
# Reads and deletes of stored responses, files and batches under /v1 are not inference.
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"})


@dataclass
class Tally:
    """Requests sent by one suite: statuses, property violations, and the ids of refused inference
    requests (for the ledger check)."""

    name: str
    statuses: Counter[int] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    # Inference requests (POST /v1/...) that were answered 2xx: each may leave one usage row.
    served: int = 0
    refused_ids: list[str] = field(default_factory=list)
    # (operation label such as "POST /admin/v1/tenants", status): what each route answered.
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    # Why 4xx answers said no ("status code param"): shows what the generated cases exercised.
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def check(self, what: str, path: str, status: int, headers: Any, body: bytes, label: str = "") -> None:
        """Record one answer and every way it breaks the property (`what` reproduces the request)."""
        self.statuses[status] += 1
        self.answers[label or path, status] += 1
        inference = path.split("?", 1)[0] in INFERENCE_PATHS
        if any(leak in body.decode("utf-8", "replace") for leak in _LEAKS):
            self.violations.append(f"{status} with a traceback for {what}: {body[:300]!r}")
        if status >= 500:
            retryable = status == 503 and _error_code(body) in RETRYABLE_503_CODES
            if not retryable and path not in _STATUS_ROUTES:
                self.violations.append(f"{status} for {what}: {body[:300]!r}")
            return
        if 400 <= status < 500:
            problem = error_shape_problem(body)
            if not problem:
                error = json.loads(body)["error"]
                self.reasons[f"{status} {error['code']} {error['param']}"] += 1
            if problem:
                self.violations.append(f"{status} not in OpenAI error shape ({problem}) for {what}")
            if inference and headers.get("x-request-id"):
                self.refused_ids.append(headers["x-request-id"])
        elif 200 <= status < 300 and inference:
            self.served += 1

    def summary(self) -> str:
        histogram = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))
        return (
            f"{self.name}: {self.requests} requests ({histogram}); {self.served} inference answers served, "
            f"{len(self.refused_ids)} refused; {len(self.violations)} violations"
        )

    def top_reasons(self, n: int = 12) -> str:
        return ", ".join(f"{reason}: {count}" for reason, count in self.reasons.most_common(n))

    def report(self) -> str:
        return "\n".join([self.summary(), *(f"  - {v}" for v in self.violations[:40])])


async def ledger_rows(database_url: str, tenant_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM usage_ledger WHERE tenant_id = $1", tenant_id)
    finally:
        await conn.close()
    return [dict(row) for row in rows]


async def check_ledger(database_url: str, tenant_id: str, tally: Tally, settle_s: float = 10.0) -> list[str]:
    """Problems with the fuzz tenant's usage rows: exactly one per served request (the recorder
    writes off the request path: wait for it), and nothing billable for a refused one.

    A request the ingress refused leaves no row. One the engine itself refused (a 400 for a context
    too long, say) keeps its attempt in the ledger as `failed` with zero tokens, by design
    (tests/serve/test_metering_end_to_end.py): that row bills nothing.
    """
    deadline = time.monotonic() + settle_s
    refused = set(tally.refused_ids)

    def split(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        of_refused = [row for row in rows if str(row["request_id"]) in refused]
        return of_refused, [row for row in rows if str(row["request_id"]) not in refused]

    of_refused, of_served = split(await ledger_rows(database_url, tenant_id))
    while len(of_served) < tally.served and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        of_refused, of_served = split(await ledger_rows(database_url, tenant_id))
    await asyncio.sleep(1.0)  # a row for a refused request would arrive as late as a served one's
    of_refused, of_served = split(await ledger_rows(database_url, tenant_id))
    problems: list[str] = []
    if len(of_served) != tally.served:
        problems.append(f"{len(of_served)} usage rows for {tally.served} served requests")
    for row in of_refused:
        if row["status"] != "failed" or row["prompt_tokens"] or row["completion_tokens"]:
            problems.append(f"billable usage row for a refused request: {row}")
    return problems


class ErrorLogWatch:
    """ERROR lines the stack's replicas (ingress and engines) log while a fuzz run is going: a
    client's mistake must not be logged as a server error, traceback and all."""

    def __init__(self, ray_temp_dir: str | None) -> None:
        self._dir = Path(ray_temp_dir) if ray_temp_dir else None
        self._offsets = {path: path.stat().st_size for path in self._logs()}

    def _logs(self) -> list[Path]:
        if self._dir is None:
            return []
        return sorted(self._dir.glob("session_2*/logs/serve/replica_crosslogic_*.log"))

    def new_errors(self) -> list[str]:
        lines: list[str] = []
        for path in self._logs():
            with path.open("rb") as log:
                log.seek(self._offsets.get(path, 0))
                text = log.read().decode("utf-8", "replace")
            lines += [line[:300] for line in text.splitlines() if line.startswith("ERROR")]
        return lines
