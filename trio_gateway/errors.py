"""One error tree for the whole gateway, attempt outcomes included.

Every failure that can reach a client is a :class:`GatewayError`. Each error knows
its HTTP status, a stable machine-readable ``type`` and whether another target may be
tried (``retryable``); where it sits in the tree says who failed (:class:`ClientError`,
:class:`UpstreamError`, or the gateway itself). The web layer renders an error once,
in the caller's dialect (admin JSON, OpenAI or Anthropic); lower layers only raise or
return them.

An attempt at a target that does not succeed ends as one of these errors too (a
value, not raised): the :class:`AttemptError` branch. Each of those also knows

* ``outcome``: its word in the attempt trail (``X-Gateway-Attempts``), the access log
  and the metrics (an HTTP status for an error answer, else ``connect_error``...);
* ``blames_target``: whether it counts against the target's health;
* ``counts_as_attempt``: ``False`` for targets skipped without being asked (their
  queue was full, the request does not translate for them);
* ``answer``: the provider's own answer, already in the client's dialect, for the
  errors a client may be shown as they are (an error status the provider sent).

Errors are translated once at each boundary, keeping the cause
(``raise ValidationFailed(...) from exc``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs


@attrs.frozen
class Problem:
    """One validation problem: where (``targets[1].weight``) and what."""

    loc: str
    msg: str


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    retryable: ClassVar[bool] = False

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


class RequestTimeout(ClientError):
    """The request body did not arrive in time (``web/server.py``)."""

    status = 408
    type = "request_timeout"


class HeadersTooLarge(ClientError):
    """Too many header fields, or a request head too large (``web/server.py``)."""

    status = 431
    type = "request_header_fields_too_large"


class ModelNotServed(ClientError):
    """The upstream rejects unknown models and no target lists this one."""

    status = 400
    type = "model_not_found"


class ModelNotAllowed(ClientError):
    """The client's API key may not use the model it asked for (its ``models``).

    403; OpenAI's dialect answers 404 ``model_not_found`` instead, as OpenAI does for
    a model a key has no access to (:func:`trio_gateway.core.limits.model_not_allowed`).
    """

    status = 403
    type = "model_not_allowed"


class KeyLimitExceeded(ClientError):
    """A limit of the client's own API key refused the request: 429, with ``Retry-After``
    (whole seconds until the limit has room again) when it will have."""

    status = 429
    type = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        retry_after: float | None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        all_headers = dict(headers or {})
        if retry_after is not None and math.isfinite(retry_after):
            all_headers["Retry-After"] = str(max(1, math.ceil(retry_after - 1e-9)))
        super().__init__(message, headers=all_headers)
        #: Which limit: ``requests``, ``tokens`` or ``budget``.
        self.limit = limit
        self.retry_after = retry_after


class BudgetExhausted(KeyLimitExceeded):
    """The key's budget for the period is used up."""

    type = "insufficient_quota"


# --- gateway-side errors -----------------------------------------------------


class ServiceUnavailable(GatewayError):
    """Nothing can serve the request now (no target for its model, store not ready)."""

    status = 503
    type = "service_unavailable"
    retryable = True


class Overloaded(GatewayError):
    """Every eligible target's queue is full; the client should come back after ``Retry-After``."""

    status = 429
    type = "overloaded"
    retryable = True


class InternalError(GatewayError):
    status = 500
    type = "internal_error"


# --- attempt outcomes -----------------------------------------------------------


@attrs.frozen
class Answer:
    """A whole HTTP answer as the client would get it (already in the client's dialect)."""

    status: int
    headers: Sequence[tuple[str, str]]
    body: bytes


class AttemptError(GatewayError):
    """How one attempt at one target ended, when it did not succeed."""

    #: The trail's word for it; defaults to ``type``.
    outcome: ClassVar[str] = ""
    blames_target: ClassVar[bool] = False
    counts_as_attempt: ClassVar[bool] = True

    def __init__(self, message: str, *, answer: Answer | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.answer = answer

    @property
    def word(self) -> str:
        """What the trail, the access log and the metrics call this outcome."""
        return self.outcome or self.type


class UpstreamError(AttemptError):
    """The target failed: fail over, and count it against the target's health."""

    status = 502
    type = "upstream_error"
    retryable = True
    blames_target = True


class UpstreamConnectError(UpstreamError):
    """No connection, or it broke before the provider answered."""

    outcome = "connect_error"


class UpstreamTimeout(UpstreamError):
    """The target's own time budget ran out (HTTP client's safety net: ``timeout``)."""

    status = 504
    type = "upstream_timeout"
    outcome = "timeout"


class FirstByteTimeout(UpstreamTimeout):
    """No answer (a whole answer's headers, a stream's first content) within ``first_byte_timeout``."""

    outcome = "first_byte_timeout"


class BodyTimeout(UpstreamTimeout):
    """A whole answer's body stopped arriving for ``body_timeout``."""

    outcome = "body_timeout"


class IdleTimeout(UpstreamTimeout):
    """A committed stream sent no content for ``idle_timeout``."""

    outcome = "idle_timeout"


class UpstreamProtocolError(UpstreamError):
    """The provider broke its API's protocol (an answer that does not parse or translate)."""

    outcome = "protocol_error"


class UpstreamReadError(UpstreamError):
    """The connection broke while the answer was being read."""

    outcome = "read_error"


class StreamIncomplete(UpstreamError):
    """A stream ended without its terminator or a finish reason."""

    outcome = "stream_incomplete"


class StreamErrorEvent(UpstreamError):
    """The provider's stream reported an error event."""

    outcome = "stream_error"


class StreamRequestError(StreamErrorEvent):
    """The provider's error event says the request itself is wrong (a client-error type
    other than a rate limit): another target would say the same."""

    retryable = False


class UpstreamStatusError(UpstreamError):
    """The provider answered with an error status that is its own failure (5xx, 408)."""

    def __init__(self, status: int, message: str, *, answer: Answer | None = None) -> None:
        super().__init__(message, answer=answer)
        self.provider_status = status

    @property
    def word(self) -> str:
        return str(self.provider_status)


class CredentialRejected(UpstreamStatusError):
    """The provider refused the gateway's credential for this target (401/403).

    The client did nothing wrong: it is the target's failure, and the provider's
    message (which may quote a key fragment) is never shown to the client.
    """

    def __init__(self, status: int, target_id: str) -> None:
        super().__init__(
            status,
            f"the provider rejected the gateway's credential for target {target_id} "
            f"(HTTP {status}); check the target's credentials",
        )


class RateLimited(UpstreamStatusError):
    """The provider answered 429: the target is parked, not held as sick."""

    blames_target = False

    def __init__(
        self, message: str, *, retry_after: float | None, answer: Answer | None = None
    ) -> None:
        super().__init__(429, message, answer=answer)
        self.retry_after = retry_after


class ModelUnavailable(UpstreamStatusError):
    """An error of the model, not of the client or the target (context too long, model
    not found or overloaded there): another target with another model may serve it."""

    blames_target = False


class DeadlineExceeded(AttemptError):
    """The request's own deadline, not the target, ended the attempt."""

    status = 504
    type = "upstream_timeout"
    outcome = "deadline"


class QueueTimeout(AttemptError):
    """The attempt waited in the gateway's own queue for the target past its first-byte budget."""

    status = 503
    type = "overloaded"
    outcome = "queue_timeout"
    retryable = True


class TargetBusy(AttemptError):
    """The target's queue was full: skipped without being asked."""

    status = 429
    type = "overloaded"
    outcome = "overloaded"
    retryable = True
    counts_as_attempt = False


class Untranslatable(AttemptError):
    """The request cannot be put in this target's dialect: skipped, the client's error there."""

    status = 400
    type = "invalid_request"
    outcome = "untranslatable"
    retryable = True
    counts_as_attempt = False

    def __init__(self, cause: ClientError) -> None:
        super().__init__(cause.message, details=cause.details)
        self.cause = cause


class AttemptAbandoned(AttemptError):
    """The gateway stopped the attempt for its own reasons (the client left)."""

    status = 499
    type = "cancelled"
    outcome = "cancelled"


class AttemptCrashed(AttemptError):
    """A bug of ours while serving the attempt; the request may go on elsewhere."""

    status = 500
    type = "internal_error"
    outcome = "internal_error"
    retryable = True


class UnsupportedMediaType(ClientError):
    """A request body in a format the endpoint does not take (the admin API takes JSON only)."""

    status = 415
    type = "unsupported_media_type"
