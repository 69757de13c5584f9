"""OpenAI-shaped answers for the errors HAProxy gives itself, before any ingress replica sees a request.

HAProxy answers some requests on its own: malformed HTTP (a header line without a colon, a bare CR,
conflicting Content-Length, a header past its buffer) with an HTML 400, a client too slow to send its
request with an HTML 408, and — when no ingress replica can take the request (all being replaced,
retries exhausted, a replica dying mid-answer) — 502/503/504, which Ray's template rewrites to a
plain-text **500 Internal Server Error**. An `openai` client then sees a server fault that is really
"try again", or a body it cannot parse.

The local stack's HAProxy launcher (`haproxy_loopback.py`) points these at the files written here:
each a complete HTTP response with the OpenAI error body (`{"error": {"message", "type", "param",
"code"}}`). 502/503/504 keep their own status (the official client retries all three) and say so;
503 adds `retry-after: 1`. Not covered: HAProxy 2.8 answers requests its HTTP/1 parser rejects
(malformed framing, never sent by an HTTP library) from its built-in pages, ignoring `errorfile`;
those stay a 400 in HTML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from crosslogic.errors import ConfigError

# status -> (reason phrase, OpenAI error type, code, message, extra headers)
_ANSWERS: dict[int, tuple[str, str, str, str, tuple[str, ...]]] = {
    400: ("Bad Request", "invalid_request_error", "bad_request",
          "The request is not valid HTTP (malformed request line or headers, or a conflicting "
          "Content-Length / Transfer-Encoding).", ()),
    408: ("Request Timeout", "invalid_request_error", "request_timeout",
          "The request was not received in time.", ()),
    500: ("Internal Server Error", "server_error", "internal_error",
          "The gateway failed while handling the request.", ()),
    501: ("Not Implemented", "invalid_request_error", "not_implemented",
          "The request uses an HTTP feature the gateway does not implement (e.g. an unknown "
          "Transfer-Encoding).", ()),
    502: ("Bad Gateway", "server_error", "bad_gateway",
          "The API replica failed while answering; retry the request.", ()),
    503: ("Service Unavailable", "server_error", "service_unavailable",
          "No API replica can take the request right now; retry shortly.", ("retry-after: 1",)),
    504: ("Gateway Timeout", "server_error", "gateway_timeout",
          "The API replica did not answer in time; retry the request.", ()),
}
# Ray's template points these three at its plain-text 500 (when it wrote that file): rewritten. All
# are also added at the top of `defaults`, so they hold whether or not Ray set its own.
_REPLACED = (502, 503, 504)
# A path HAProxy's config and sed both take as is.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+-]+\Z")


def error_response(status: int) -> bytes:
    reason, error_type, code, message, extra = _ANSWERS[status]
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    headers = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body.encode())}",
        "cache-control: no-cache",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def write_error_files(directory: Path) -> dict[int, Path]:
    """One response file per status in `directory` (created 0700)."""
    if not _PLAIN_PATH.match(str(directory)):
        raise ConfigError(f"HAProxy error files need a plain path (letters, digits, ./_+-): {directory}")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: dict[int, Path] = {}
    for status in _ANSWERS:
        path = directory / f"{status}.http"
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_bytes(error_response(status))
        staging.replace(path)
        files[status] = path
    return files


def sed_expressions(files: dict[int, Path]) -> list[str]:
    """sed -E expressions that point the config's error pages at `files`."""
    expressions = [
        rf"s#^([[:space:]]*errorfile[[:space:]]+{status})[[:space:]]+.*#\1 {files[status]}#"
        for status in _REPLACED
    ]
    # `a` appends after the `defaults` line, in the order given.
    expressions += [rf"/^defaults[[:space:]]*$/a\    errorfile {status} {files[status]}" for status in _ANSWERS]
    return expressions
