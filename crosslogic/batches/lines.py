"""One input line of a batch: parsed and checked, and the output or error line it becomes.

A line that fails its checks fails alone, into the batch's error file, with an OpenAI-shaped error.
"""

from __future__ import annotations

import json
from typing import Any

from crosslogic.batches.ids import line_request_id


class LineError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_line(raw: bytes, endpoint: str) -> tuple[str | None, dict[str, Any]]:
    """(custom_id, request body) of one JSONL line; LineError if it is not a valid request of `endpoint`."""
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LineError("invalid_json_line", "This line is not parseable as valid JSON.") from None
    if not isinstance(item, dict):
        raise LineError("invalid_request", "Each line must be a JSON object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("missing_required_parameter", "The line has no 'custom_id' (a non-empty string).")
    if item.get("method", "POST") != "POST":
        raise LineError("invalid_method", "'method' must be 'POST'.")
    if item.get("url") != endpoint:
        raise LineError("invalid_url", f"'url' must be '{endpoint}', the batch's endpoint.")
    body = item.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise LineError("invalid_request", "'body' must be an object with a 'model'.")
    if body.get("stream"):
        raise LineError("invalid_request", "Streaming is not supported in a batch.")
    return custom_id, body


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line that failed its checks, when it can still be read."""
    try:
        item = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    value = item.get("custom_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def line_id(request_id: str) -> str:
    return "batch_req_" + request_id[len("req_"):]


def output_line(request_id: str, custom_id: str | None, status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """The output-file line of a request the engine answered (an error answer carries its error too)."""
    error = None
    if status_code >= 400:
        found = body.get("error")
        detail: dict[str, Any] = found if isinstance(found, dict) else {}
        error = {"code": detail.get("code"), "message": detail.get("message")}
    return {
        "id": line_id(request_id), "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body}, "error": error,
    }


def error_line(request_id: str, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": line_id(request_id), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def split_lines(batch_id: str, data: bytes, endpoint: str) -> list[tuple[int, str | None, str, str, Any, Any]]:
    """The rows of `batch_lines` for an input file: pending with its body, or failed with its error."""
    rows: list[tuple[int, str | None, str, str, Any, Any]] = []
    for raw in (line for line in data.splitlines() if line.strip()):
        no = len(rows)
        request_id = line_request_id(batch_id, no)
        try:
            custom_id, body = parse_line(raw, endpoint)
        except LineError as exc:
            cid = custom_id_of(raw)
            rows.append((no, cid, request_id, "failed", None, error_line(request_id, cid, exc.code, exc.message)))
            continue
        rows.append((no, custom_id, request_id, "pending", body, None))
    return rows
