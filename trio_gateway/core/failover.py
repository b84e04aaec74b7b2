"""What an attempt's outcome means: for the client, for failover, for the target's health.

Sans-IO. Rules (the issue's, written once):

* 2xx: success.
* Connect errors, timeouts, 5xx, 408 and 429: the target failed. The next eligible
  target may be tried, and the target's breaker counts a failure.
* Any other 4xx: the client's own error. Relayed as it is, no failover, no penalty.
* An attempt the gateway abandoned (the client left) or could not place (the
  target's queue was full) says nothing about the target's health.
"""

from __future__ import annotations

import enum
import math
import time
from email.utils import parsedate_to_datetime

import attrs


class Verdict(enum.Enum):
    SUCCESS = "success"
    #: The target failed: fail over, count against its health.
    FAILURE = "failure"
    #: The client's own error (a 4xx): relay it, no failover, no penalty.
    CLIENT_ERROR = "client_error"
    #: Nothing learnt about the target (client left, queue full): no penalty.
    NEUTRAL = "neutral"


def status_verdict(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.SUCCESS
    if status >= 500 or status in (408, 429):
        return Verdict.FAILURE
    return Verdict.CLIENT_ERROR


class Outcome(enum.StrEnum):
    """Attempt outcomes other than an HTTP status, as shown in the attempt trail."""

    CONNECT_ERROR = "connect_error"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    PROTOCOL_ERROR = "protocol_error"
    READ_ERROR = "read_error"
    STREAM_INCOMPLETE = "stream_incomplete"
    STREAM_ERROR = "stream_error"
    #: The request's deadline, not this target, ended the attempt.
    DEADLINE = "deadline"
    #: The request cannot be put in this target's dialect.
    UNTRANSLATABLE = "untranslatable"
    OVERLOADED = "overloaded"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"


#: Outcomes that say nothing about the target's health.
NEUTRAL_OUTCOMES = frozenset(
    {
        Outcome.OVERLOADED,
        Outcome.CANCELLED,
        Outcome.INTERNAL_ERROR,
        Outcome.DEADLINE,
        Outcome.UNTRANSLATABLE,
    }
)


def outcome_verdict(outcome: Outcome) -> Verdict:
    return Verdict.NEUTRAL if outcome in NEUTRAL_OUTCOMES else Verdict.FAILURE


@attrs.frozen
class Attempt:
    """One line of the attempt trail: which target, what happened, how long it took."""

    target_id: str
    outcome: str
    ms: float

    def render(self) -> str:
        return f"{self.target_id};outcome={self.outcome};ms={self.ms:.0f}"


def render_trail(attempts: list[Attempt]) -> str:
    """The ``X-Gateway-Attempts`` header value."""
    return ", ".join(a.render() for a in attempts)


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
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now_epoch is None else now_epoch)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
