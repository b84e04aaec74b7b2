"""One attempt at one target: its time budgets, and what its answer means. Sans-IO.

Theory of operation
-------------------
The target's actor runs each attempt and tells an :class:`AttemptBudget` what
happens; the budget says until when the actor may wait for the next thing, and
which error ends the attempt if that time comes first. Phases and their timers
(absolute times; ``deadline`` is the client request's, shared by all its attempts)::

    WAITING    sent, no answer yet         min(deadline, started + first_byte_timeout)
    OPENING    a stream's headers are in,  the same first-byte bound: a stream's first
               no content event yet        byte is its first content, metadata and
                                           keep-alives do not count
    BODY       a whole answer's headers    min(deadline, last progress + body_timeout):
               are in, its body is coming  a body that stops arriving fails over, it does
                                           not wait for the deadline
    STREAMING  committed: content went to  last content + idle_timeout, not counting
               the client                  the time the client took to take what it was
                                           sent (``paused``); a stream has no total limit
                                           and only content resets it

Transitions: WAITING -> OPENING (``headers(stream=True)``) or BODY; OPENING ->
STREAMING (``content``); BODY and STREAMING progress in place. When the timer fires,
:meth:`AttemptBudget.expired` names the budget that ran out, or
:class:`DeadlineExceeded` (nobody blamed) when the request's deadline was the nearer
bound.

:func:`judge_status` says what an HTTP status (and, for a few 4xx, the body) means
for the client, for failover and for the target's health.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import attrs

from trio_gateway import jsonio
from trio_gateway.errors import (
    AttemptError,
    BodyTimeout,
    DeadlineExceeded,
    FirstByteTimeout,
    IdleTimeout,
)


class Phase(enum.Enum):
    WAITING = "waiting"
    OPENING = "opening"
    BODY = "body"
    STREAMING = "streaming"


@attrs.frozen
class Budgets:
    """A service's per-attempt time budgets (seconds)."""

    first_byte_timeout: float = 30.0
    body_timeout: float = 10.0
    idle_timeout: float = 60.0


@attrs.define
class AttemptBudget:
    """See the module docstring. ``timer`` is where the actor's wait must end."""

    budgets: Budgets
    deadline: float
    started: float
    phase: Phase = Phase.WAITING
    timer: float = 0.0
    #: When the first content event came (a stream), or the headers (a whole answer).
    first_byte_at: float | None = None

    @classmethod
    def start(cls, budgets: Budgets, deadline: float, now: float) -> AttemptBudget:
        budget = cls(budgets, deadline, now)
        budget.timer = min(deadline, now + budgets.first_byte_timeout)
        return budget

    def headers(self, now: float, *, stream: bool) -> None:
        if stream:
            self.phase = Phase.OPENING  # the first-byte bound stands
        else:
            self.phase = Phase.BODY
            self.first_byte_at = now
            self.timer = min(self.deadline, now + self.budgets.body_timeout)

    def progress(self, now: float) -> None:
        """Body bytes of a whole answer arrived."""
        self.timer = min(self.deadline, now + self.budgets.body_timeout)

    def content(self, now: float) -> bool:
        """A stream's content event arrived; ``True`` when it is the first (commit)."""
        self.timer = now + self.budgets.idle_timeout
        if self.phase is Phase.STREAMING:
            return False
        self.phase = Phase.STREAMING
        self.first_byte_at = now
        return True

    def paused(self, seconds: float) -> None:
        """The gateway did not read the stream for ``seconds`` (its client was slow to
        take what it was sent): that was not the provider's idleness, so the idle
        timer does not count it."""
        self.timer += seconds

    def expired(self) -> AttemptError:
        """The error that ends the attempt when ``timer`` has come."""
        budgets = self.budgets
        match self.phase:
            case Phase.STREAMING:
                return IdleTimeout(f"no content from the provider for {budgets.idle_timeout:g} s")
            case Phase.BODY:
                if self.timer >= self.deadline:
                    return DeadlineExceeded("the request's deadline ran out reading the answer")
                return BodyTimeout(
                    f"the answer's body stopped arriving for {budgets.body_timeout:g} s"
                )
        if self.deadline < self.started + budgets.first_byte_timeout:
            return DeadlineExceeded("the request's deadline ran out before the first byte")
        what = "content" if self.phase is Phase.OPENING else "answer"
        return FirstByteTimeout(f"no {what} within {budgets.first_byte_timeout:g} s")


# --- what an answer means ------------------------------------------------------------


class Meaning(enum.Enum):
    SUCCESS = "success"
    #: The client's own error: relayed as it is, no failover, no penalty.
    CLIENT_ERROR = "client_error"
    #: The target failed (5xx, 408): fail over, count it against the target.
    FAILURE = "failure"
    #: The provider refused the gateway's credential (401, 403): the target's failure,
    #: and its message is not the client's business.
    CREDENTIAL = "credential"
    #: 429: park the target (its Retry-After), fail over, no penalty.
    RATE_LIMITED = "rate_limited"
    #: An error of the model here (context too long, model unknown there, request too
    #: large for it): fail over to another target or model, no penalty; relayed when
    #: nothing else can serve.
    MODEL = "model"


#: OpenAI ``error.code`` values that belong to the model, not the client.
_MODEL_CODES = frozenset(
    {"context_length_exceeded", "model_not_found", "string_above_max_length", "tokens_exceeded"}
)
#: Phrases of provider messages for the same (Anthropic has no codes).
_MODEL_PHRASES = (
    "prompt is too long",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "input is too long",
    "model not found",
    "does not exist",
)


def judge_status(status: int, body: bytes = b"") -> Meaning:
    """What a provider's HTTP answer means. ``body`` is read only for 400, 404 and 413."""
    if 200 <= status < 300:
        return Meaning.SUCCESS
    if status == 429:
        return Meaning.RATE_LIMITED
    if status in (401, 403):
        return Meaning.CREDENTIAL
    if status >= 500 or status == 408:
        return Meaning.FAILURE
    if status == 413:
        return Meaning.MODEL  # too large for this provider; another may take it
    if status in (400, 404) and is_model_error(body):
        return Meaning.MODEL
    return Meaning.CLIENT_ERROR


def is_model_error(body: bytes) -> bool:
    """Does this error body (OpenAI or Anthropic shape) blame the model rather than the request?

    A content-filter refusal is the client's (it would be refused anywhere), so it is
    not one.
    """
    try:
        parsed: Any = jsonio.loads(body) if body else None
    except ValueError:
        return False
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        return False
    code = error.get("code")
    if isinstance(code, str):
        if "content" in code and ("filter" in code or "policy" in code):
            return False
        if code in _MODEL_CODES:
            return True
    message = error.get("message")
    if not isinstance(message, str):
        return False
    lowered = message.lower()
    if "model" in lowered and error.get("type") == "not_found_error":
        return True
    return any(phrase in lowered for phrase in _MODEL_PHRASES)


def retry_after(headers: Mapping[str, str], now_epoch: float | None = None) -> float | None:
    """Seconds a provider asked to wait: ``retry-after-ms`` (OpenAI) or ``Retry-After``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    return parse_retry_after(headers.get("retry-after"), now_epoch)


def parse_retry_after(value: str | None, now_epoch: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now_epoch is None else now_epoch)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
