"""CrossLogic errors, shaped like OpenAI's: {"error": {"message", "type", "param", "code"}}.

Every failure that reaches a client is one of these. Core code raises them; the HTTP edge turns them
into responses (see `crosslogic.api.errors`). `code` is always a string, as OpenAI's is.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class CrossLogicError(Exception):
    """Base of every client-visible error. Subclasses set the HTTP status and OpenAI type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    # A retryable error may be retried by the client (or by us, before the first token).
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return ErrorBody(
            error=ErrorDetail(
                message=self.message, type=self.error_type, param=self.param, code=self.code
            )
        ).model_dump()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.code!r}, {self.message!r})"


class InvalidRequestError(CrossLogicError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(CrossLogicError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(CrossLogicError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(CrossLogicError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class ConflictError(CrossLogicError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(CrossLogicError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(CrossLogicError):
    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"
    retryable = True


class InsufficientQuotaError(CrossLogicError):
    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class InternalError(CrossLogicError):
    status_code = 500
    error_type = "server_error"
    default_code = "internal_error"


class UpstreamError(CrossLogicError):
    """The engine failed while handling the request."""

    status_code = 502
    error_type = "server_error"
    default_code = "engine_error"
    retryable = True


class ServiceUnavailableError(CrossLogicError):
    """No engine, database or other dependency can take the request right now."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"
    retryable = True


class ConfigError(Exception):
    """Bad configuration found at start-up: the message is the one line an operator reads."""
