"""Health: a circuit breaker per target, fed by real traffic and optional probes. Sans-IO.

Theory of operation
-------------------
States and transitions (``now`` is passed in; nothing here reads a clock)::

    HEALTHY --(threshold consecutive failures, the last `threshold` within `interval` s)--> EJECTED
    EJECTED --(cool-down over: first call of `admit` at or after `ejected_until`)--> HALF_OPEN
    HALF_OPEN --(the one trial request succeeds)--> HEALTHY
    HALF_OPEN --(the trial fails)--> EJECTED, cool-down doubled
    HALF_OPEN --(the trial is abandoned, e.g. the client left)--> HALF_OPEN, trial slot free

Invariants:

* While EJECTED and ``now < ejected_until``, :meth:`Breaker.admits` is false: no
  request is sent.
* Once the cool-down is over at most one request is in flight to the target until
  one succeeds: :meth:`admit` hands out the trial, :meth:`admits` is false until
  that trial's outcome.
* The cool-down is ``interval * 2**level`` capped at ``max(cap, interval)``, and never
  shorter than the ``Retry-After`` a 429 announced. ``level`` grows by one on each
  failed trial, and drops back to 0 once the target has stayed healthy for as long
  as its last cool-down.
* Failures count while they are consecutive (any success resets the run) and the
  last ``threshold`` of them fit in ``interval`` seconds: a sliding window, so
  three failures at 59, 61 and 62 s eject with ``interval=60``.
* ``passive=False`` keeps the counts (for the health endpoint) but real traffic
  never ejects.

Active probes (:meth:`Breaker.probed`), when configured, come every ``interval``
seconds and are counted on their own: ``threshold`` failed probes in a row eject a
healthy target (whatever ``passive`` says). A probe never shortens a cool-down: a
good probe once the cool-down is over serves as the trial (HEALTHY at once); a
failed one then counts as a failed trial. A good probe on a healthy target
changes nothing, so one that answers probes but fails real requests is still
ejected.

Outcomes are reported with the ticket :meth:`admit` returned, so a stale outcome
(a request admitted before an ejection) cannot close a trial it did not own.
"""

from __future__ import annotations

import collections
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
    #: Times of the latest failures of the current run (at most ``threshold``).
    recent: collections.deque[float] = attrs.field(factory=collections.deque)
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
        self.recent.clear()
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
        self.consecutive_failures += 1
        recent = self.recent
        recent.append(now)
        while len(recent) > self.policy.threshold:
            recent.popleft()
        if (
            self.policy.passive
            and len(recent) >= self.policy.threshold
            and now - recent[0] <= self.policy.interval
        ):
            self._eject(now, retry_after)

    def probed(self, now: float, ok: bool, error: str = "") -> None:
        """The outcome of an active health probe.

        Probes come every ``interval`` seconds, so they are counted on their own:
        ``threshold`` failed probes in a row eject, whatever the time between them.
        """
        over = self.state is State.HALF_OPEN or (
            self.state is State.EJECTED and now >= self.ejected_until
        )
        if ok:
            self.probe_failures = 0
            if over and not self.trial_in_flight:
                self.state = State.HEALTHY
                self.consecutive_failures = 0
                self.recent.clear()
                self.restored_at = now
            return
        self.last_error = f"probe: {error}"
        self.probe_failures += 1
        if over and not self.trial_in_flight:
            self.level += 1  # a failed trial, as far as the cool-down is concerned
            self._eject(now, None)
        elif self.state is State.HEALTHY and self.probe_failures >= self.policy.threshold:
            self._eject(now, None)

    def abandoned(self, ticket: Ticket) -> None:
        """The request ended without a verdict (client left, gateway shutting down)."""
        if ticket is Ticket.TRIAL and self.state is State.HALF_OPEN:
            self.trial_in_flight = False

    def _eject(self, now: float, retry_after: float | None) -> None:
        if (
            self.state is State.HEALTHY
            and self.restored_at is not None
            and now - self.restored_at >= self.last_cooldown
        ):
            self.level = 0  # healthy for a whole cool-down since it was restored
        cooldown = self.policy.cooldown(self.level)
        if retry_after is not None:
            cooldown = max(cooldown, retry_after)
        self.state = State.EJECTED
        self.ejected_until = now + cooldown
        self.last_cooldown = cooldown
        self.ejections += 1
        self.recent.clear()
        self.probe_failures = 0

    def statistics(self, now: float) -> BreakerStatistics:
        """A snapshot; an ejected target whose cool-down is over shows as ``half_open``."""
        state = self.state
        if state is State.EJECTED and now >= self.ejected_until:
            state = State.HALF_OPEN
        return BreakerStatistics(
            state=state,
            consecutive_failures=self.consecutive_failures,
            ejected_until=self.ejected_until if state is State.EJECTED else None,
            ejections=self.ejections,
            level=self.level,
            trial_in_flight=self.trial_in_flight,
            last_error=self.last_error,
        )
