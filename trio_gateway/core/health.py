"""Passive health: a circuit breaker per target, fed by real traffic. Sans-IO.

Theory of operation
-------------------
States and transitions (``now`` is passed in; nothing here reads a clock)::

    HEALTHY --(threshold consecutive failures within `interval` s)--> EJECTED
    EJECTED --(cool-down over: first call of `admit` at or after `ejected_until`)--> HALF_OPEN
    HALF_OPEN --(the one trial request succeeds)--> HEALTHY
    HALF_OPEN --(the trial fails)--> EJECTED, cool-down doubled
    HALF_OPEN --(the trial is abandoned, e.g. the client left)--> HALF_OPEN, trial slot free

Invariants:

* While EJECTED, :meth:`Breaker.admits` is false: no request is sent.
* While HALF_OPEN, at most one request is in flight to the target: :meth:`admit`
  hands out the trial and :meth:`admits` is false until that trial's outcome.
* The cool-down is ``interval * 2**level`` capped at ``max(cap, interval)``, and never
  shorter than the ``Retry-After`` a 429 announced. ``level`` grows by one on each
  ejection that follows a failed trial, and drops back to 0 once the target has
  stayed healthy for as long as its last cool-down.
* Failures that are more than ``interval`` seconds apart do not add up: the
  count restarts at the first failure of a new window.
* ``passive=False`` keeps the counters (for the health endpoint) but real traffic
  never ejects; failed active probes (:meth:`Breaker.probed`) still do.
* A successful active probe re-admits an ejected or half-open target at once
  (unless its trial is in flight); on a healthy target it changes nothing, so a
  target that answers probes but fails real requests is still ejected.

Successes and failures are reported with the ticket :meth:`admit` returned, so a
stale outcome (a request admitted before an ejection) cannot close a trial it
did not own.
"""

from __future__ import annotations

import enum

import attrs

DEFAULT_COOLDOWN_CAP_S = 300.0


class State(enum.StrEnum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    HALF_OPEN = "half_open"


class Ticket(enum.Enum):
    """What :meth:`Breaker.admit` hands out: a normal request or the half-open trial."""

    NORMAL = "normal"
    TRIAL = "trial"


@attrs.frozen
class BreakerPolicy:
    passive: bool = True
    threshold: int = 3
    interval: float = 60.0
    cooldown_cap: float = DEFAULT_COOLDOWN_CAP_S

    def cooldown(self, level: int) -> float:
        return min(self.interval * 2**level, max(self.cooldown_cap, self.interval))


@attrs.frozen
class BreakerStatistics:
    state: State
    consecutive_failures: int
    ejected_until: float | None
    ejections: int
    level: int
    trial_in_flight: bool
    last_error: str | None


@attrs.define
class Breaker:
    policy: BreakerPolicy = attrs.field(factory=BreakerPolicy)
    state: State = State.HEALTHY
    consecutive_failures: int = 0
    window_start: float = 0.0
    ejected_until: float = 0.0
    level: int = 0
    ejections: int = 0
    trial_in_flight: bool = False
    restored_at: float | None = None
    last_cooldown: float = 0.0
    last_error: str | None = None
    probe_failures: int = 0

    # --- admission -------------------------------------------------------------

    def admits(self, now: float) -> bool:
        """Would :meth:`admit` let a request through at ``now``? (No state change.)"""
        if self.state is State.HEALTHY:
            return True
        if self.state is State.EJECTED:
            return now >= self.ejected_until
        return not self.trial_in_flight

    def admit(self, now: float) -> Ticket:
        """Take a slot for one request; call only when :meth:`admits` is true."""
        if self.state is State.EJECTED:
            if now < self.ejected_until:
                raise RuntimeError("admit() on an ejected target")
            self.state = State.HALF_OPEN
        if self.state is State.HALF_OPEN:
            if self.trial_in_flight:
                raise RuntimeError("admit() while the half-open trial is in flight")
            self.trial_in_flight = True
            return Ticket.TRIAL
        return Ticket.NORMAL

    def readmission_at(self) -> float | None:
        """When an ejected target can next be tried (``None`` when it can be now)."""
        return self.ejected_until if self.state is State.EJECTED else None

    # --- outcomes --------------------------------------------------------------------

    def succeeded(self, now: float, ticket: Ticket) -> None:
        self.consecutive_failures = 0
        if ticket is Ticket.TRIAL and self.state is State.HALF_OPEN:
            self.state = State.HEALTHY
            self.trial_in_flight = False
            self.restored_at = now

    def failed(
        self, now: float, ticket: Ticket, error: str, retry_after: float | None = None
    ) -> None:
        self.last_error = error
        if ticket is Ticket.TRIAL and self.state is State.HALF_OPEN:
            self.trial_in_flight = False
            self.level += 1
            self._eject(now, retry_after)
            return
        if self.state is not State.HEALTHY:
            return  # a request admitted before the ejection: already counted
        if self.consecutive_failures == 0 or now - self.window_start > self.policy.interval:
            self.consecutive_failures = 0
            self.window_start = now
        self.consecutive_failures += 1
        if self.policy.passive and self.consecutive_failures >= self.policy.threshold:
            if self.restored_at is not None and now - self.restored_at >= self.last_cooldown:
                self.level = 0
            self._eject(now, retry_after)

    def probed(self, now: float, ok: bool, error: str = "") -> None:
        """The outcome of an active health probe.

        Probes come every ``interval`` seconds, so they are counted on their own:
        ``threshold`` failed probes in a row eject, whatever the time between them.
        """
        if ok:
            self.probe_failures = 0
            if self.state is State.EJECTED or (
                self.state is State.HALF_OPEN and not self.trial_in_flight
            ):
                self.state = State.HEALTHY
                self.consecutive_failures = 0
                self.restored_at = now
            return
        self.last_error = f"probe: {error}"
        self.probe_failures += 1
        if self.state is State.HEALTHY and self.probe_failures >= self.policy.threshold:
            self._eject(now, None)

    def abandoned(self, ticket: Ticket) -> None:
        """The request ended without a verdict (client left, gateway shutting down)."""
        if ticket is Ticket.TRIAL and self.state is State.HALF_OPEN:
            self.trial_in_flight = False

    def _eject(self, now: float, retry_after: float | None) -> None:
        cooldown = self.policy.cooldown(self.level)
        if retry_after is not None:
            cooldown = max(cooldown, retry_after)
        self.state = State.EJECTED
        self.ejected_until = now + cooldown
        self.last_cooldown = cooldown
        self.ejections += 1

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            state=self.state,
            consecutive_failures=self.consecutive_failures,
            ejected_until=self.ejected_until if self.state is State.EJECTED else None,
            ejections=self.ejections,
            level=self.level,
            trial_in_flight=self.trial_in_flight,
            last_error=self.last_error,
        )
