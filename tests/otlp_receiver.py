"""A strict OTLP/HTTP traces receiver: the collector's side of the protocol, for tests.

It speaks what an OpenTelemetry Collector's `otlphttp` receiver does for traces, binary encoding only:
`POST /v1/traces` with `Content-Type: application/x-protobuf`, a body (gzip or deflate encoded, or
not) that parses as `ExportTraceServiceRequest`, answered 200 with an `ExportTraceServiceResponse`.
Everything else is refused and counted in `rejected`: another path 404, another method 405, another
content type (JSON included) 415, an unknown content encoding 415, no Content-Length 411, a body
over 16 MiB 413, a body that does not parse or holds a malformed span (ids of the wrong length or
zero, no name, an end before its start, an unknown kind) 400. Spans are kept in memory, decoded.

Binds 127.0.0.1 on a free port; runs in a thread of the test process (`start`, `stop`).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
MAX_BODY = 16 * 1024 * 1024
KINDS = {Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED", Span.SPAN_KIND_INTERNAL: "INTERNAL",
         Span.SPAN_KIND_SERVER: "SERVER", Span.SPAN_KIND_CLIENT: "CLIENT",
         Span.SPAN_KIND_PRODUCER: "PRODUCER", Span.SPAN_KIND_CONSUMER: "CONSUMER"}
STATUS = {Status.STATUS_CODE_UNSET: "UNSET", Status.STATUS_CODE_OK: "OK", Status.STATUS_CODE_ERROR: "ERROR"}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int
    trace_state: str = ""
    links: tuple[str, ...] = field(default=())

    def text(self) -> str:
        """Everything the span says, as one string (for "no secret anywhere" checks)."""
        return repr((self.name, self.attributes, self.status_message, self.events, self.resource, self.trace_state))


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        out[pair.key] = _value(pair.value)
    return out


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size or raw == bytes(size):
        raise Rejected(400, f"{what} must be {size} bytes, not all zero")
    return raw.hex()


def decode_request(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise Rejected(400, f"not an ExportTraceServiceRequest: {exc}") from None
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if not span.name:
                    raise Rejected(400, "a span without a name")
                if span.kind not in KINDS:
                    raise Rejected(400, f"unknown span kind {span.kind}")
                if span.end_time_unix_nano < span.start_time_unix_nano or not span.start_time_unix_nano:
                    raise Rejected(400, f"span {span.name}: bad start/end times")
                spans.append(ReceivedSpan(
                    name=span.name,
                    trace_id=_id(span.trace_id, 16, "trace_id"),
                    span_id=_id(span.span_id, 8, "span_id"),
                    parent_span_id=_id(span.parent_span_id, 8, "parent_span_id") if span.parent_span_id else None,
                    kind=KINDS[span.kind],
                    attributes=_attributes(span.attributes),
                    status=STATUS.get(span.status.code, str(span.status.code)),
                    status_message=span.status.message,
                    events=tuple((e.name, _attributes(e.attributes)) for e in span.events),
                    resource=resource,
                    scope=scope_spans.scope.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    trace_state=span.trace_state,
                    links=tuple(link.trace_id.hex() for link in span.links),
                ))
    return spans


class OtlpReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.rejected: list[tuple[int, str]] = []
        self.accepted_requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{TRACES_PATH}"

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                try:
                    spans = receiver._accept(self)
                except Rejected as refused:
                    with receiver._lock:
                        receiver.rejected.append((refused.status, refused.reason))
                    self._answer(refused.status, refused.reason.encode(), "text/plain")
                    return
                with receiver._lock:
                    receiver._spans.extend(spans)
                    receiver.accepted_requests += 1
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)

            def _refuse_method(self) -> None:
                with receiver._lock:
                    receiver.rejected.append((405, f"method {self.command}"))
                self._answer(405, b"POST only", "text/plain")

            do_GET = do_PUT = do_DELETE = do_PATCH = _refuse_method

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _accept(self, handler: BaseHTTPRequestHandler) -> list[ReceivedSpan]:
        if handler.path != TRACES_PATH:
            self._drain(handler)
            raise Rejected(404, f"no such path {handler.path}")
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        length_header = handler.headers.get("Content-Length")
        if length_header is None:
            raise Rejected(411, "Content-Length required")
        length = int(length_header)
        if length > MAX_BODY:
            raise Rejected(413, "body too large")
        raw = handler.rfile.read(length)
        if content_type != PROTOBUF:
            raise Rejected(415, f"content type {content_type or '(none)'}: only {PROTOBUF}")
        encoding = (handler.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            elif encoding == "deflate":
                raw = zlib.decompress(raw)
            elif encoding != "identity":
                raise Rejected(415, f"content encoding {encoding}")
        except (OSError, zlib.error, EOFError) as exc:
            raise Rejected(400, f"bad {encoding} body: {exc}") from None
        return decode_request(raw)

    @staticmethod
    def _drain(handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if 0 < length <= MAX_BODY:
            handler.rfile.read(length)

    # -- reading what arrived --------------------------------------------------------------------

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans() if s.trace_id == trace_id]

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 30.0) -> list[ReceivedSpan]:
        """The spans received once `done(spans)` holds; AssertionError with what did arrive if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"spans not as expected after {timeout_s}s: {[(s.name, s.trace_id[:8]) for s in spans]}; "
                    f"rejected: {self.rejected}")
            time.sleep(0.05)
