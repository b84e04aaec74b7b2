"""One error tree for the whole gateway.

Every failure that can reach a client is a :class:`GatewayError`. Each error knows
its HTTP status, a stable machine-readable ``type``, whether another target may be
tried (``retryable``) and, for proxy errors, who failed (``culprit``: the client,
the gateway or the upstream). The web layer renders an error once, in the caller's
dialect (admin JSON, OpenAI or Anthropic); lower layers only raise.

Errors are translated once at each boundary, keeping the cause
(``raise ValidationFailed(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal

import attrs

Culprit = Literal["client", "gateway", "upstream"]


@attrs.frozen
class Problem:
    """One validation problem: where (``targets[1].weight``) and what."""

    loc: str
    msg: str


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False
    culprit: ClassVar[Culprit] = "gateway"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[Problem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)
        self.headers = dict(headers or {})


# --- client errors -----------------------------------------------------------


class ClientError(GatewayError):
    status = 400
    type = "invalid_request"
    culprit = "client"


class ValidationFailed(ClientError):
    """The body was understood but is not acceptable; ``details`` names each problem."""

    status = 422
    type = "validation_failed"

    @classmethod
    def single(cls, loc: str, msg: str) -> ValidationFailed:
        return cls(f"{loc}: {msg}", details=[Problem(loc, msg)])

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> ValidationFailed:
        n = len(problems)
        summary = "; ".join(f"{p.loc}: {p.msg}" for p in problems[:3])
        more = f" (and {n - 3} more)" if n > 3 else ""
        return cls(f"{n} invalid field{'s' if n != 1 else ''}: {summary}{more}", details=problems)


class PayloadTooLarge(ClientError):
    status = 413
    type = "payload_too_large"


class AuthenticationFailed(ClientError):
    status = 401
    type = "authentication_failed"


class PermissionDenied(ClientError):
    status = 403
    type = "permission_denied"


class NotFound(ClientError):
    status = 404
    type = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    type = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    type = "conflict"


# --- gateway-side errors -----------------------------------------------------


class ServiceUnavailable(GatewayError):
    """Nothing can serve the request now (no eligible target, store not ready, overload)."""

    status = 503
    type = "service_unavailable"
    retryable = True


class Overloaded(GatewayError):
    """A bounded queue is full; the client should come back after ``Retry-After``."""

    status = 429
    type = "overloaded"
    retryable = True


class InternalError(GatewayError):
    status = 500
    type = "internal_error"


# --- upstream errors ---------------------------------------------------------


class UpstreamError(GatewayError):
    """A target failed. ``retryable`` says whether the next target may be tried."""

    status = 502
    type = "upstream_error"
    culprit = "upstream"
    retryable = True


class UpstreamConnectError(UpstreamError):
    type = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class UpstreamProtocolError(UpstreamError):
    type = "upstream_protocol_error"


class UnsupportedMediaType(ClientError):
    """A request body in a format the endpoint does not take (the admin API takes JSON only)."""

    status = 415
    type = "unsupported_media_type"
