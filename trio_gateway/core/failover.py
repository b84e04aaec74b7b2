"""Failover across the attempts of one client request: the trail, and the final answer. Sans-IO.

Theory of operation
-------------------
An :class:`Exchange` follows one client request from its arrival to its answer. The
dispatcher asks it whether another attempt may be made (:meth:`Exchange.may_try`),
tells it how each attempt ended (:meth:`Exchange.record`), and, when no attempt
succeeded, asks it for the answer (:meth:`Exchange.conclude`). Rules:

* each target is tried at most once per request, at most ``max_attempts`` attempts;
  targets skipped without being asked (queue full, request untranslatable for them)
  do not count;
* a retryable failure (:attr:`~trio_gateway.errors.GatewayError.retryable`) moves on;
  a failure that is not (the request's deadline ran out) ends the request;
* no attempt is started with less than :data:`MIN_ATTEMPT_S` left before the deadline.

The answer when nothing succeeded, first match wins:

1. the last error answer a provider sent that is the client's to see (an error
   status, a 429 with its ``Retry-After``, an error of the model), relayed in the
   client's dialect; never a provider's refusal of the gateway's own credential;
2. every target skipped the request as untranslatable: that client error;
3. every target able to serve was at capacity: 429 with ``Retry-After: 1``;
4. nothing could be tried at all: 503 (no target serves the model);
5. the request's deadline ran out: 504;
6. else the last failure: 502, or 504 for a timeout, naming what happened.
"""

from __future__ import annotations

import attrs

from trio_gateway.errors import (
    Answer,
    AttemptError,
    CredentialRejected,
    GatewayError,
    Overloaded,
    ServiceUnavailable,
    TargetBusy,
    Untranslatable,
    UpstreamStatusError,
)

#: An attempt that would start with less time than this before the deadline is not made.
MIN_ATTEMPT_S = 0.01


@attrs.frozen
class AttemptRecord:
    """One line of the attempt trail: which target, what happened, how long it took."""

    target_id: str
    provider: str
    model: str
    outcome: str
    ms: float
    #: Tried although out of rotation (every target able to serve was out or tried).
    last_resort: bool = False
    #: The faults injected into this attempt (``hang``, ``latency+error``), if any: the
    #: gateway's fault injection on live traffic.
    fault: str | None = None
    #: When the attempt started (the caller's clock), for traces.
    started: float = 0.0

    def render(self) -> str:
        fault = f";fault={self.fault}" if self.fault is not None else ""
        return f"{self.target_id};outcome={self.outcome};ms={self.ms:.0f}{fault}"


def render_trail(records: list[AttemptRecord]) -> str:
    """The ``X-Gateway-Attempts`` header value."""
    return ", ".join(r.render() for r in records)


def render_faults(records: list[AttemptRecord]) -> str | None:
    """The ``X-Gateway-Fault`` response header: each attempt that had faults injected."""
    faulted = [f"{r.fault}; target={r.target_id}" for r in records if r.fault is not None]
    return ", ".join(faulted) if faulted else None


@attrs.frozen
class Conclusion:
    """What to answer when no attempt succeeded.

    ``answer`` set: relay it (a provider's error, in the client's dialect). Otherwise
    render ``error``. ``record`` names the target whose answer or failure it is
    (``None`` when nothing was tried).
    """

    error: GatewayError
    record: AttemptRecord | None = None
    answer: Answer | None = None
    #: The message to render instead of ``error.message``.
    message: str | None = None


@attrs.define
class Exchange:
    """One client request across its attempts. See the module docstring."""

    deadline: float
    max_attempts: int
    tried: set[str] = attrs.field(factory=set)
    trail: list[AttemptRecord] = attrs.field(factory=list)
    failures: list[tuple[AttemptRecord, AttemptError]] = attrs.field(factory=list)
    made: int = 0
    over: bool = False

    def may_try(self, now: float) -> bool:
        return (
            not self.over and self.made < self.max_attempts and now < self.deadline - MIN_ATTEMPT_S
        )

    def record(self, record: AttemptRecord, error: AttemptError | None) -> None:
        """An attempt ended: ``error`` is ``None`` when it answered the client."""
        self.tried.add(record.target_id)
        self.trail.append(record)
        if error is None:
            return
        self.failures.append((record, error))
        if error.counts_as_attempt:
            self.made += 1
        if not error.retryable:
            self.over = True

    def conclude(self, model: str | None) -> Conclusion:
        """The answer when no attempt succeeded (see the module docstring)."""
        failures = self.failures
        for record, error in reversed(failures):
            if (
                isinstance(error, UpstreamStatusError)
                and not isinstance(error, CredentialRejected)
                and error.answer is not None
            ):
                return Conclusion(error, record, error.answer)
        if failures and all(isinstance(e, Untranslatable) for _, e in failures):
            record, error = failures[-1]
            assert isinstance(error, Untranslatable)
            return Conclusion(error.cause, record)
        real = [(r, e) for r, e in failures if e.counts_as_attempt]
        if not real:
            if failures and all(isinstance(e, TargetBusy | Untranslatable) for _, e in failures):
                busy = Overloaded(
                    "every target able to serve this request is at capacity; retry shortly",
                    headers={"Retry-After": "1"},
                )
                return Conclusion(busy, failures[-1][0])
            what = f"model {model!r}" if model else "this request"
            return Conclusion(
                ServiceUnavailable(f"no target can serve {what} now", headers={"Retry-After": "1"})
            )
        record, error = real[-1]
        message = f"{len(real)} attempt(s) failed; last: {error.word}: {error.message}"
        return Conclusion(error, record, message=message)
