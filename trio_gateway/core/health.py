"""Health: one state machine per target, fed by real traffic and the gateway's own probes. Sans-IO.

Theory of operation
-------------------
States (``now`` is passed in; nothing here reads a clock)::

    HEALTHY  --(threshold consecutive failures, however long each took)------> EJECTED
    HEALTHY  --(on probation: one failure)------------------------------------> EJECTED
    HEALTHY  --(threshold failed active probes in a row)----------------------> EJECTED
    HEALTHY  --(429: Retry-After, or a short backoff without one)------------> PARKED
    PARKED   --(its time is over)----------------------------------------------> HEALTHY
    EJECTED  --(out-period over: the actor starts a recovery check)-----------> CHECKING
    CHECKING --(the check passes)----------------------------------------------> HEALTHY, on probation
    CHECKING --(the check fails)------------------------------------------------> EJECTED for ejection_time
    CHECKING --(the check is answered 429)--------------------------------------> PARKED
    any out  --(a last-resort request succeeds: see ``Ticket.PANIC``)----------> HEALTHY
    HEALTHY  --(another instance ejected it: ``ejected_elsewhere``)-----------> EJECTED

A *recovery check* is the gateway's own cheap request (``GET`` the provider's model
list, or ``health_checks.path``): no client request is ever the guinea pig, and a
failed check costs no client anything, so checks repeat every ``ejection_time``
without any doubling. A target restored by a check is *on probation* until its
first success with real traffic: it takes one request at a time (a ``TRIAL``
ticket), and one failure ejects it again at once, so a provider that answers checks
but fails real requests costs one (failed-over) call per cycle, not ``threshold``
nor a burst of concurrent ones.

The *out-period* after an ejection is ``ejection_time * 2**level``, at most
``max(interval, ejection_time)``: ``interval`` is "the time between health checks",
so an ejected target is checked again at least that often. ``level`` grows by one
for each ejection that comes before the target has stayed restored for as long as
its previous out-period, and is 0 otherwise: only a target that keeps failing soon
after each recovery is kept out longer.

A 429 is not sickness: it parks the target for exactly its ``Retry-After`` (capped at
:data:`MAX_RETRY_AFTER_S`) without counting a failure, and the target is back, without
a check, when that time is over. Without ``Retry-After`` the park lasts
:data:`RATE_LIMIT_BACKOFF_S`, doubling for each 429 in a row (to
:data:`RATE_LIMIT_BACKOFF_MAX_S`); a success resets it.

Invariants:

* Only HEALTHY (and PARKED once its time is over) admits requests; on probation, one
  at a time.
* An ejection happens only when ``may_eject()`` allows it: the upstream's cap on how
  many of its targets are out at once. A target refused ejection stays HEALTHY with
  its failures counted (the health endpoint says so) and is ejected at its next
  failure once the cap allows.
* Outcomes are reported with the :class:`Ticket` the request was admitted with: a
  request admitted before an ejection cannot eject the target again, nor restore it.
* ``passive=False``: real traffic is counted but never ejects.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable

import attrs

#: The longest Retry-After honoured as it is; a longer one parks the target this long.
MAX_RETRY_AFTER_S = 3600.0
RATE_LIMIT_BACKOFF_S = 1.0
RATE_LIMIT_BACKOFF_MAX_S = 30.0
HISTORY = 16


class State(enum.StrEnum):
    HEALTHY = "healthy"
    PARKED = "parked"
    EJECTED = "ejected"
    #: A recovery check is in flight (shown as ``half_open``, its usual name).
    CHECKING = "half_open"


#: States in which a target is out of rotation.
OUT = frozenset({State.PARKED, State.EJECTED, State.CHECKING})


class Ticket(enum.Enum):
    """How a request was admitted; its outcome is reported with it."""

    NORMAL = "normal"
    #: The one request a target on probation takes at a time.
    TRIAL = "trial"
    #: Admitted although out of rotation: every target able to serve the request was
    #: out or already tried, and the gateway tries rather than refuses.
    PANIC = "panic"


class Check(enum.Enum):
    """What a probe found."""

    OK = "ok"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"


@attrs.frozen
class HealthPolicy:
    passive: bool = True
    threshold: int = 3
    interval: float = 60.0
    ejection_time: float = 5.0

    def out_period(self, level: int) -> float:
        longest = max(self.interval, self.ejection_time)
        return min(self.ejection_time * 2 ** min(level, 32), longest)


#: Why a target was ejected, as a bounded word (metrics' ``reason`` label): the
#: transitions out of rotation that count as ejections.
EJECTION_CAUSES = frozenset(
    {"consecutive_failures", "probation", "active_probes", "other_instance"}
)


@attrs.frozen
class Transition:
    at: float
    old: State
    new: State
    #: What happened, for people: ``3 failures in a row (503, 503, first_byte_timeout)``.
    reason: str
    #: The same as one bounded word, for metrics: ``consecutive_failures``, ``probation``,
    #: ``active_probes``, ``other_instance`` (ejections), ``rate_limited``, ``park_over``,
    #: ``check_started``, ``check_passed``, ``check_failed``, ``last_resort_succeeded``.
    cause: str = ""
    #: For an ejection: the failures that caused it (outcome words), oldest first.
    failures: tuple[str, ...] = ()
    #: For a park: the ``Retry-After`` it honours (``None``: none was sent, a backoff).
    retry_after: float | None = None
    #: Decided here (``False``: taken from another instance, not to be announced again).
    local: bool = True


@attrs.frozen
class HealthStatistics:
    state: State
    since: float
    #: When an out target is next re-admitted (parked) or checked (ejected).
    until: float | None
    reason: str
    probation: bool
    consecutive_failures: int
    ejections: int
    level: int
    last_error: str | None
    history: tuple[Transition, ...]


def _allow() -> bool:
    return True


@attrs.define
class Health:
    """One target's health. See the module docstring."""

    policy: HealthPolicy = attrs.field(factory=HealthPolicy)
    #: The upstream's cap on ejections: called at the moment of an ejection.
    may_eject: Callable[[], bool] = _allow
    state: State = State.HEALTHY
    since: float = 0.0
    reason: str = "never failed"
    until: float = 0.0
    probation: bool = False
    trial_in_flight: bool = False
    consecutive_failures: int = 0
    probe_failures: int = 0
    rate_limits: int = 0
    level: int = 0
    ejections: int = 0
    restored_at: float | None = None
    last_out: float = 0.0
    last_error: str | None = None
    #: The latest failures of the current run, for the reason of an ejection.
    recent: collections.deque[str] = attrs.field(factory=lambda: collections.deque(maxlen=3))
    history: collections.deque[Transition] = attrs.field(
        factory=lambda: collections.deque(maxlen=HISTORY)
    )
    #: Set by every transition; the owner takes it (to log it once) with :meth:`take_transition`.
    pending: Transition | None = None

    # --- admission -------------------------------------------------------------

    def admits(self, now: float) -> bool:
        """Would a request be admitted at ``now``? (No state change.)"""
        state = self.state
        if state is State.HEALTHY:
            return not self.trial_in_flight
        return state is State.PARKED and now >= self.until

    def admit(self, now: float) -> Ticket:
        """Take a slot; call only when :meth:`admits` is true."""
        if self.state is State.PARKED:
            if now < self.until:
                raise RuntimeError("admit() on a parked target")
            self._move(now, State.HEALTHY, "the rate limit's time is over", "park_over")
        elif self.state is not State.HEALTHY or self.trial_in_flight:
            raise RuntimeError(f"admit() on a target that is {self.state}, or on trial")
        if self.probation:
            self.trial_in_flight = True
            return Ticket.TRIAL
        return Ticket.NORMAL

    def released(self, ticket: Ticket) -> None:
        """The request ended without a verdict (the client left, the deadline ran out)."""
        if ticket is Ticket.TRIAL:
            self.trial_in_flight = False

    def out_until(self, now: float) -> float:
        """When this target would next be back (``now`` when it is in rotation): the
        order in which out targets are tried as a last resort."""
        return self.until if self.state is not State.HEALTHY and self.until > now else now

    # --- real traffic --------------------------------------------------------------

    def succeeded(self, now: float, ticket: Ticket) -> None:
        self.released(ticket)
        self.consecutive_failures = 0
        self.rate_limits = 0
        self.recent.clear()
        if ticket is Ticket.PANIC and self.state in OUT:
            self._restore(
                now, "a last-resort request succeeded", "last_resort_succeeded", probation=False
            )
        elif self.state is State.HEALTHY:
            self.probation = False

    def failed(self, now: float, ticket: Ticket, error: str) -> None:
        """A failure that is the target's own (``AttemptError.blames_target``)."""
        self.released(ticket)
        self.last_error = error
        if self.state is not State.HEALTHY:
            return  # out already: a last resort, or a request admitted before it went out
        self.consecutive_failures += 1
        self.recent.append(error)
        if not self.policy.passive:
            return
        if self.probation:
            self._eject(now, f"failed on probation ({error})", "probation", (error,))
        elif self.consecutive_failures >= self.policy.threshold:
            self._eject(
                now,
                f"{self.consecutive_failures} failures in a row ({', '.join(self.recent)})",
                "consecutive_failures",
                tuple(self.recent),
            )

    def rate_limited(self, now: float, ticket: Ticket, retry_after: float | None) -> None:
        """The provider answered 429: park, do not count a failure."""
        self.released(ticket)
        stale = self.state is not State.PARKED or now < self.until
        if ticket is not Ticket.PANIC and self.state is not State.HEALTHY and stale:
            return  # admitted before it went out: what put it out still stands
        if retry_after is None:
            seconds = min(
                RATE_LIMIT_BACKOFF_S * 2 ** min(self.rate_limits, 32), RATE_LIMIT_BACKOFF_MAX_S
            )
            self.rate_limits += 1
            why = f"rate limited (429 without Retry-After: {seconds:g} s backoff)"
        else:
            seconds = min(retry_after, MAX_RETRY_AFTER_S)
            why = f"rate limited (429, Retry-After {retry_after:g} s)"
        self.last_error = "HTTP 429"
        self.until = now + seconds
        self._move(now, State.PARKED, why, "rate_limited", retry_after=retry_after)

    # --- probes --------------------------------------------------------------------

    def check_due(self, now: float) -> bool:
        """Is a recovery check due (the out-period of an ejection is over)?"""
        return self.state is State.EJECTED and now >= self.until

    def ejected_elsewhere(self, now: float, until: float, reason: str) -> None:
        """Another instance ejected this target until ``until`` (shared health).

        Taken as it is, within the upstream's cap: the out-period is theirs, the
        recovery checks then are this instance's own. It changes no level: this
        instance saw no failure.
        """
        if self.state is not State.HEALTHY or until <= now or not self.may_eject():
            return
        self.until = until
        self.last_out = until - now
        self.ejections += 1
        self.probation = False
        self.trial_in_flight = False
        self.recent.clear()
        self._move(
            now,
            State.EJECTED,
            f"ejected by another instance: {reason}",
            "other_instance",
            local=False,
        )

    def start_check(self, now: float) -> None:
        self._move(now, State.CHECKING, "checking whether the target recovered", "check_started")

    def checked(
        self, now: float, result: Check, error: str = "", retry_after: float | None = None
    ) -> None:
        """The outcome of a recovery check (ignored unless one was in flight)."""
        if self.state is not State.CHECKING:
            return
        if result is Check.OK:
            self._restore(now, "the recovery check passed", "check_passed", probation=True)
        elif result is Check.RATE_LIMITED:
            self.rate_limited(now, Ticket.PANIC, retry_after)
        else:
            self.last_error = f"check: {error}"
            self.until = now + self.policy.ejection_time
            self._move(
                now,
                State.EJECTED,
                f"the recovery check failed ({error})",
                "check_failed",
                failures=(f"check: {error}",),
            )

    def probed(
        self, now: float, result: Check, error: str = "", retry_after: float | None = None
    ) -> None:
        """The outcome of an active probe of a target in rotation.

        ``threshold`` failed probes in a row eject it, whatever ``passive`` says. A
        passing probe changes nothing else: a target that answers probes but fails
        real requests is still ejected by them.
        """
        if self.state is not State.HEALTHY:
            return
        if result is Check.OK:
            self.probe_failures = 0
        elif result is Check.RATE_LIMITED:
            self.rate_limited(now, Ticket.NORMAL, retry_after)
        else:
            self.last_error = f"probe: {error}"
            self.probe_failures += 1
            if self.probe_failures >= self.policy.threshold:
                self._eject(
                    now,
                    f"{self.probe_failures} active probes failed in a row ({error})",
                    "active_probes",
                    (f"probe: {error}",),
                )

    # --- transitions ---------------------------------------------------------------

    def _eject(self, now: float, reason: str, cause: str, failures: tuple[str, ...]) -> None:
        if not self.may_eject():
            self.reason = (
                f"would be ejected ({reason}), but too many targets of its upstream are out"
            )
            return
        if self.restored_at is not None and now - self.restored_at < self.last_out:
            self.level += 1
        else:
            self.level = 0
        out = self.policy.out_period(self.level)
        self.last_out = out
        self.until = now + out
        self.ejections += 1
        self.probation = False
        self.trial_in_flight = False
        self.probe_failures = 0
        self.recent.clear()
        self._move(now, State.EJECTED, reason, cause, failures=failures)

    def _restore(self, now: float, reason: str, cause: str, *, probation: bool) -> None:
        self.restored_at = now
        self.probation = probation
        self.trial_in_flight = False
        self.consecutive_failures = 0
        self.probe_failures = 0
        self.recent.clear()
        self._move(now, State.HEALTHY, reason, cause)

    def _move(
        self,
        now: float,
        new: State,
        reason: str,
        cause: str,
        *,
        failures: tuple[str, ...] = (),
        retry_after: float | None = None,
        local: bool = True,
    ) -> None:
        transition = Transition(
            now, self.state, new, reason, cause, failures, retry_after, local=local
        )
        self.state = new
        self.since = now
        self.reason = reason
        self.history.append(transition)
        self.pending = transition

    def take_transition(self) -> Transition | None:
        """The latest transition not yet taken (for the owner to log once)."""
        transition, self.pending = self.pending, None
        return transition

    def statistics(self, now: float) -> HealthStatistics:
        """A snapshot; a parked target whose time is over shows as healthy."""
        state, until = self.state, self.until
        if state is State.PARKED and now >= until:
            state = State.HEALTHY
        return HealthStatistics(
            state=state,
            since=self.since,
            until=until if state in (State.PARKED, State.EJECTED) else None,
            reason=self.reason,
            probation=self.probation,
            consecutive_failures=self.consecutive_failures,
            ejections=self.ejections,
            level=self.level,
            last_error=self.last_error,
            history=tuple(self.history),
        )
