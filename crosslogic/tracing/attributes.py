"""Span attribute names (OpenTelemetry's semantic conventions where one exists) and how errors are
recorded: by type and OpenAI error code, never by message (a message can quote what the client sent)."""

from __future__ import annotations

from opentelemetry.trace import Span, StatusCode

HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
MODEL = "gen_ai.request.model"
OPERATION = "gen_ai.operation.name"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
REQUEST_ID = "crosslogic.request_id"
TENANT_ID = "crosslogic.tenant_id"
STREAM = "crosslogic.stream"
OUTCOME = "crosslogic.outcome"
ERROR_CODE = "crosslogic.error_code"
ATTEMPT = "crosslogic.attempt"
REPLICA = "crosslogic.replica"
REGION = "crosslogic.region"
ADMISSION_OVERLAPPED = "crosslogic.admission.overlapped"
ENGINE_FIRST_MS = "crosslogic.engine.first_ms"

# OpenAI endpoint -> gen_ai.operation.name
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


def mark_error(span: Span, error: BaseException | str) -> None:
    """The span failed: ERROR status with the error's type and code (no message, no traceback)."""
    if isinstance(error, str):
        span.set_attribute(ERROR_CODE, error)
        span.set_status(StatusCode.ERROR, error)
        return
    code = getattr(error, "code", None)
    span.set_attribute(ERROR_TYPE, type(error).__name__)
    if isinstance(code, str):
        span.set_attribute(ERROR_CODE, code)
    span.set_status(StatusCode.ERROR, code if isinstance(code, str) else type(error).__name__)
