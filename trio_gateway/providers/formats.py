"""The two client-facing API dialects, and errors written in each. Sans-IO.

A client speaks OpenAI chat completions or Anthropic Messages; so does every
provider (``openai``, ``openai-compatible`` and ``azure-openai`` targets speak the
OpenAI dialect). This module names the dialects and renders an error the way each
dialect's official SDK expects it, both as a response body and as a mid-stream event:

- OpenAI: ``{"error": {"message", "type", "param", "code"}}``. Mid-stream, the same
  object as a bare ``data:`` event: the openai SDK raises ``APIError`` on any data
  event whose JSON has a truthy ``error`` member.
- Anthropic: ``{"type": "error", "error": {"type", "message"}}``. Mid-stream, as an
  ``event: error`` event: the anthropic SDK raises its status error on it.

Error *types* are chosen per dialect. A caller may pass a type from either dialect's
vocabulary, or one of the gateway's own (:mod:`trio_gateway.errors`). A type the
target dialect knows is kept; anything else is replaced by the dialect's type for the
HTTP status, and (OpenAI only, which has a slot for it) the original type is kept as
``code`` so nothing is lost.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator

from trio_gateway.errors import GatewayError

__all__ = [
    "Api",
    "ApiFormat",
    "dialect_type",
    "error_body",
    "responses_error_event",
    "status_for_type",
    "stream_error_event",
]


class ApiFormat(enum.StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"

    @classmethod
    def of_provider(cls, provider: str) -> ApiFormat:
        """The dialect of a configured provider kind (``trio_gateway.config.models.Provider``)."""
        try:
            return _PROVIDER_FORMATS[provider]
        except KeyError:
            raise ValueError(f"unknown provider kind {provider!r}") from None


class Api(enum.StrEnum):
    """The client-facing APIs that go to a provider: which endpoint a request is for.

    The dialect (:class:`ApiFormat`) decides the shape of errors; the API decides the
    body and the stream grammar. OpenAI's dialect has three: chat completions, the
    Responses API (``POST /v1/responses``), whose streams are typed events
    (``response.created`` … ``response.completed``) rather than chat chunks, and
    embeddings. Anthropic's has Messages and token counting
    (``POST /v1/messages/count_tokens``).
    """

    CHAT = "chat"
    MESSAGES = "messages"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    COUNT_TOKENS = "count_tokens"

    @property
    def format(self) -> ApiFormat:
        return ApiFormat.ANTHROPIC if self in _ANTHROPIC_APIS else ApiFormat.OPENAI


_ANTHROPIC_APIS = frozenset({Api.MESSAGES, Api.COUNT_TOKENS})


_PROVIDER_FORMATS: dict[str, ApiFormat] = {
    "openai": ApiFormat.OPENAI,
    "openai-compatible": ApiFormat.OPENAI,
    "azure-openai": ApiFormat.OPENAI,
    "anthropic": ApiFormat.ANTHROPIC,
}

_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_OPENAI_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
}

_KNOWN: dict[ApiFormat, frozenset[str]] = {
    ApiFormat.ANTHROPIC: frozenset(_ANTHROPIC_TYPES.values()) | {"api_error"},
    ApiFormat.OPENAI: frozenset(_OPENAI_TYPES.values()),
}


def _subclasses(cls: type[GatewayError]) -> Iterator[type[GatewayError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# Every type name either dialect or the gateway uses, with the status it implies.
_TYPE_STATUS: dict[str, int] = {
    **{c.type: c.status for c in (GatewayError, *_subclasses(GatewayError))},
    **{t: s for s, t in _OPENAI_TYPES.items()},
    **{t: s for s, t in _ANTHROPIC_TYPES.items()},
    # Spellings providers use that are not in the tables above.
    "overloaded_error": 529,
    "timeout_error": 504,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "context_length_exceeded": 400,
    "invalid_api_key": 401,
    "model_not_found": 404,
    "service_unavailable": 503,
    "BadRequestError": 400,
    "NotFoundError": 404,
    "InternalServerError": 500,
}


def status_for_type(type: str | None, default: int = 500) -> int:
    """The HTTP status an error type name implies (any dialect, or the gateway's)."""
    if type is None:
        return default
    return _TYPE_STATUS.get(type, default)


def dialect_type(fmt: ApiFormat, status: int) -> str:
    """The error type ``fmt``'s own API uses for ``status``."""
    if fmt is ApiFormat.ANTHROPIC:
        found = _ANTHROPIC_TYPES.get(status)
        if found is None:
            found = "api_error" if status >= 500 else "invalid_request_error"
        return found
    found = _OPENAI_TYPES.get(status)
    if found is None:
        found = "server_error" if status >= 500 else "invalid_request_error"
    return found


def _error_object(
    fmt: ApiFormat,
    status: int,
    type: str | None,
    message: str,
    code: str | None,
    param: str | None,
) -> dict[str, object]:
    if type is not None and type in _KNOWN[fmt]:
        kind = type
    else:
        kind = dialect_type(fmt, status)
        if code is None and type is not None and type != kind:
            code = type
    if fmt is ApiFormat.ANTHROPIC:
        return {"type": kind, "message": message}
    return {"message": message, "type": kind, "param": param, "code": code}


def error_body(
    fmt: ApiFormat,
    status: int,
    type: str | None,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """A complete error response body in ``fmt``'s dialect (UTF-8 JSON)."""
    error = _error_object(fmt, status, type, message, code, param)
    if fmt is ApiFormat.ANTHROPIC:
        return _dumps({"type": "error", "error": error}).encode()
    return _dumps({"error": error}).encode()


def stream_error_event(
    fmt: ApiFormat,
    type: str | None,
    message: str,
    *,
    status: int | None = None,
    code: str | None = None,
) -> bytes:
    """A mid-stream error event that ``fmt``'s SDK turns into its own exception.

    ``status`` (when known) picks the dialect's type for a ``type`` that dialect does
    not know; otherwise the status implied by ``type`` is used.
    """
    if status is None:
        status = status_for_type(type)
    error = _error_object(fmt, status, type, message, code, None)
    if fmt is ApiFormat.ANTHROPIC:
        return (
            b"event: error\ndata: " + _dumps({"type": "error", "error": error}).encode() + b"\n\n"
        )
    return b"data: " + _dumps({"error": error}).encode() + b"\n\n"


def responses_error_event(
    type: str | None,
    message: str,
    *,
    sequence_number: int,
    status: int | None = None,
    code: str | None = None,
) -> bytes:
    """An ``error`` event of a Responses stream, in both of the shapes clients read.

    OpenAI documents (and its SDKs type) the event flat: ``{"type": "error", "code",
    "message", "param", "sequence_number"}``; the API actually sends the fields nested
    in an ``error`` object, and the Python SDK raises ``APIError`` on a top-level
    ``error`` member. This event carries both, so a typed parser finds its fields and
    the SDKs raise as they do for the real thing.
    """
    if status is None:
        status = status_for_type(type)
    error = _error_object(ApiFormat.OPENAI, status, type, message, code, None)
    flat = error["code"] if error["code"] is not None else error["type"]
    event = {
        "type": "error",
        "sequence_number": sequence_number,
        "code": flat,
        "message": message,
        "param": None,
        "error": error,
    }
    return b"event: error\ndata: " + _dumps(event).encode() + b"\n\n"


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
