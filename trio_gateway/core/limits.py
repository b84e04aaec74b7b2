"""Per-key limits, sans-IO: shared buckets and budget counters, leased by each process.

Theory of operation
-------------------
**What is shared.** Each limit of a key is one row of the store, keyed by a
*scope* string:

* ``requests_per_minute`` and ``tokens_per_minute`` are **token buckets**: a
  level, at most a minute's worth (the *capacity*), refilled continuously at
  ``capacity / 60`` per second. A full bucket lets a burst of a minute's worth
  through, then the limit's pace; in any ``t`` seconds at most
  ``capacity * (1 + t / 60)`` pass. (OpenAI and Anthropic meter their own limits
  this way, so the headers mean to clients what they are used to.)
* a **budget** is a **counter** of what was used in its period (a UTC day, a UTC
  month, or ever), one row per period: a new period is a new row.

:func:`apply_op` is the only arithmetic on those rows, and every store runs it
inside one transaction per exchange, so the stores cannot disagree.

**Leases.** A process never asks the store per request. Each :class:`Allowance`
holds a *lease*: units taken from the shared row ahead of need (``local``), spent
locally by requests. The runtime's exchanger sends every allowance's
:meth:`Allowance.ask` in one batch: take more when the lease falls below half its
target size (before it runs out), give back what is not needed (a lease larger
than twice its target, or the whole lease once the key is idle for
:data:`IDLE_S`), and charge what requests used beyond their reservation. The
target size adapts to the key's pace: about :data:`LEASE_S` seconds of its
traffic, at least one request's worth, and at most :data:`MAX_SHARE` of the
bucket (or of what is left of a budget): so a small limit (10 requests a minute)
is leased one request at a time and stays exact across instances, a busy key
is refilled about once a second.

What that gives (docs/keys.md):

* **No overshoot of what is leased.** A request passes only by spending units
  taken from the shared row, so requests never exceed a limit, whatever the number
  of processes. Token limits reserve an estimate and settle to what the provider
  reported: they are overshot only by the amount in-flight requests exceed their
  estimate.
* **Stranded allowance.** Units leased by one process cannot serve another's
  requests until they are spent or given back: at most one target lease per
  process and limit, given back within :data:`IDLE_S` of the key going quiet.

**A request** (:meth:`KeyState.admit`): each limit it touches must have the
request's units in its lease (one request; the token estimate, capped at a
minute's worth so a big request can pass on a full bucket; the token and cost
estimates for a budget, uncapped: a budget does not refill). All are
taken, or none. If one is short, either the shared row (as last seen, refilled
since) cannot have enough: the request is refused with the time until it could
(``Retry-After``); or it may: the request waits for the next exchange
(:class:`Shortfall`), which all the requests short at that moment share.

**Settling** (:meth:`KeyState.settle`): a reservation larger than what the
provider reported goes back to the lease; a smaller one is paid from the lease,
and what the lease cannot pay is charged to the shared row at the next exchange
(a bucket may go below zero: later requests wait until it refills).

**The store away** (:meth:`Allowance.go_alone`): the declared choice is to fail
open with a local limit. Each process then enforces every limit on its own
traffic, with its own bucket of the full size (starting from what it last knew),
so N processes admit at most N times a limit while the store is away. Budgets
continue from what was last known to be left; what was spent meanwhile is charged
to the shared counter when the store is back (:meth:`Allowance.back`); buckets
start over from the shared row (what was spent alone has refilled within a
minute anyway).
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from trio_gateway.config.models import (
    ApiKey,
    Budget,
    BudgetPeriod,
    Gateway,
    Price,
    effective_limits,
    effective_models,
)
from trio_gateway.core.estimate import Estimate
from trio_gateway.errors import BudgetExhausted, KeyLimitExceeded, ModelNotAllowed
from trio_gateway.providers.usage import NOTHING, Usage

BUCKET = "bucket"
COUNTER = "counter"
#: Floating-point slack when comparing amounts of whole units.
EPSILON = 1e-9
#: A lease aims to last this long at the key's pace.
LEASE_S = 1.0
#: No lease is larger than this share of a bucket, or of what is left of a budget.
MAX_SHARE = 0.1
#: Below this share of its target a lease is refilled; above ``HIGH_WATER`` times it, trimmed.
LOW_WATER = 0.5
HIGH_WATER = 2.0
#: A key unused this long gives its leases back.
IDLE_S = 2.0
#: How often the pace of a key is measured.
PACE_WINDOW_S = 0.5
SECONDS_PER_MINUTE = 60.0
#: A million: prices are per million tokens.
PER_PRICE = 1_000_000.0


# --- the shared rows ---------------------------------------------------------------------


@attrs.frozen
class LimitOp:
    """One exchange with one shared row: first ``put``, then ``take``.

    ``put`` > 0 gives units back (a bucket is never filled past its capacity, a
    counter never goes below zero); ``put`` < 0 charges units used beyond what was
    taken. ``take`` is granted as far as there is room (whole units if ``whole``).
    ``capacity`` and ``rate`` come from the configuration of the moment: a limit
    changed by an admin applies at the next exchange.
    """

    scope: str
    kind: str
    capacity: float
    rate: float = 0.0
    put: float = 0.0
    take: float = 0.0
    whole: bool = True


@attrs.frozen
class LimitGrant:
    """The answer to a :class:`LimitOp`: what was granted and what the row holds now.

    ``level``: what is left: a bucket's level (below zero while in debt), or a
    budget's limit minus what is used (below zero when overspent).
    """

    scope: str
    granted: float
    level: float


@attrs.frozen
class LimitRow:
    """A stored row: what is used (a bucket's as of time ``at``, drained since)."""

    scope: str
    kind: str
    value: float
    at: float


def apply_op(op: LimitOp, row: LimitRow | None, now: float) -> tuple[LimitRow, LimitGrant]:
    """The row after ``op`` at the store's time ``now``, and the grant. Pure.

    Both kinds of row store what is *used*: a bucket's use drains at ``rate`` (its
    level is ``capacity`` minus it; see :func:`_drained`), a counter's never does.
    So a limit an admin raises has the extra room at once, and one lowered has less
    at once. A missing row is nothing used: a full bucket, a fresh budget.
    """
    take = max(0.0, op.take)
    if op.whole:
        take = float(math.floor(take + EPSILON))
    used = 0.0 if row is None else row.value
    if op.kind == BUCKET and row is not None:
        used = _drained(used, op.rate, now - row.at)
    used = max(0.0, used - op.put)  # given back (never below nothing used), or charged
    granted = min(take, _room(op.capacity - used, op.whole))
    used += granted
    return LimitRow(op.scope, op.kind, used, now), LimitGrant(op.scope, granted, op.capacity - used)


def _drained(used: float, rate: float, elapsed: float) -> float:
    """A bucket's use after ``elapsed`` seconds: it drains at the limit's pace, and
    whatever it holds is gone within a minute (more than a minute's worth is in it
    only after a limit was lowered, or after a charge beyond a reservation)."""
    return max(0.0, used - max(rate, used / SECONDS_PER_MINUTE) * max(0.0, elapsed))


def _room(level: float, whole: bool) -> float:
    if level <= 0:
        return 0.0
    return float(math.floor(level + EPSILON)) if whole else level


def row_level(row: LimitRow | None, kind: str, capacity: float, rate: float, now: float) -> float:
    """What a row has left at ``now`` without changing it (bucket level, or budget left)."""
    if row is None:
        return capacity
    used = row.value
    if kind == BUCKET:
        used = _drained(used, rate, now - row.at)
    return capacity - used


# --- one limit, as one process holds it -------------------------------------------------------


@attrs.define(eq=False)
class Allowance:
    """One shared limit's lease in this process; see the module docstring.

    All times are the process's own clock (``now``, monotonic seconds).
    """

    scope: str
    kind: str
    capacity: float
    rate: float = 0.0
    whole: bool = True
    #: Leased and not spent (while alone: the process's own bucket or budget).
    local: float = 0.0
    #: For the next exchange: given back (> 0) or charged beyond the lease (< 0).
    put: float = 0.0
    #: Units that requests waiting for an exchange need.
    wanted: float = 0.0
    #: The op of the exchange in flight, if any.
    sending: LimitOp | None = None
    #: The row's level (bucket) or what is left (counter) at the last exchange, and when.
    seen: float | None = None
    seen_at: float = 0.0
    #: The lease size aimed for, and the smallest useful one (a typical request).
    target: float = 1.0
    unit: float = 1.0
    spent: float = 0.0
    window_unit: float = 0.0
    window_at: float = 0.0
    #: Units spent per second, smoothed.
    pace: float = 0.0
    used_at: float = -math.inf
    #: Reservations not settled yet.
    open: int = 0
    #: The store is away: the process enforces the limit on its own.
    alone: bool = False
    alone_at: float = 0.0
    alone_lease: float = 0.0
    alone_spent: float = 0.0
    #: No key uses it any more (its limit or key was removed, its period is over):
    #: forgotten once it has nothing left to give back.
    retired: bool = False
    #: Give the lease back at the next exchange without taking more (:meth:`release`).
    releasing: bool = False

    @classmethod
    def bucket(cls, scope: str, per_minute: float) -> Allowance:
        return cls(scope, BUCKET, float(per_minute), per_minute / SECONDS_PER_MINUTE)

    @classmethod
    def counter(cls, scope: str, limit: float, *, whole: bool = True) -> Allowance:
        return cls(scope, COUNTER, float(limit), 0.0, whole)

    def reconfigure(self, capacity: float, rate: float) -> None:
        """An admin changed the limit: the next exchange uses the new one.

        The shared row stores what is used, so the room seen changes with the limit.
        """
        if self.seen is not None:
            self.seen += float(capacity) - self.capacity
        self.capacity = float(capacity)
        self.rate = rate
        if self.alone and self.kind == BUCKET:
            self.local = min(self.local, self.capacity)

    # --- the request path: no I/O, a few comparisons ---------------------------------------

    def has(self, n: float, now: float) -> bool:
        """Can ``n`` units be spent now from the lease (or the own bucket, while alone)?"""
        if self.alone and self.kind == BUCKET:
            self.local = min(self.capacity, self.local + self.rate * (now - self.alone_at))
            self.alone_at = now
        return self.local + EPSILON >= n

    def spend(self, n: float, now: float) -> None:
        self.local -= n
        self.spent += n
        self.used_at = now
        self.open += 1
        if n > self.window_unit:
            self.window_unit = n
            if n > self.unit:
                self.unit = n
        if self.alone:
            self.alone_spent += n

    def short(self) -> bool:
        """Time for an exchange: the lease is below its low-water mark."""
        return self.local < self.target * LOW_WATER and self.sending is None and not self.alone

    def shared_level(self, now: float) -> float:
        """The shared row's level as last seen, refilled since (unknown: full)."""
        if self.seen is None:
            return self.capacity
        if self.kind == BUCKET:
            used = self.capacity - self.seen
            return self.capacity - _drained(used, self.rate, now - self.seen_at)
        return self.seen

    def remaining(self, now: float) -> float:
        """What this process believes is left: its lease and the shared row as last seen.

        Never more than a bucket holds: leased units drain from the shared row's use
        like spent ones, so the lease and the row's level may add up to more.
        """
        if self.alone:
            return max(0.0, self.local)
        left = max(0.0, self.local + self.shared_level(now))
        return min(left, self.capacity) if self.kind == BUCKET else left

    def may_get(self, n: float, now: float) -> bool:
        """Could an exchange bring the lease to ``n``? (No: refuse without waiting.)"""
        if self.alone:
            return False
        room = self.shared_level(now)
        if self.whole:
            room = math.floor(room + EPSILON)
        return self.local + max(0.0, room) + EPSILON >= n

    def wait_s(self, n: float, now: float) -> float:
        """Seconds until ``n`` units could be had (infinite for a budget)."""
        missing = n - self.remaining(now)
        if missing <= EPSILON:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return missing / self.rate

    def full_in(self, now: float) -> float:
        """Seconds until the bucket is full again, as far as this process can tell."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, self.capacity - self.remaining(now)) / self.rate

    def adjust(self, reserved: float, actual: float) -> None:
        """Settle one reservation of ``reserved`` units that used ``actual``."""
        self.open -= 1
        diff = reserved - actual
        if self.alone:
            self.local += diff
            self.alone_spent -= diff
            if self.kind == BUCKET:
                self.local = min(self.local, self.capacity)
            return
        if diff >= 0:
            self.local += diff
            return
        extra = -diff
        paid = min(extra, max(0.0, self.local))
        self.local -= paid
        self.put -= extra - paid

    def cancel(self, reserved: float) -> None:
        """A reservation that was never used (the request did not go out)."""
        self.adjust(reserved, 0.0)
        self.spent -= reserved

    def release(self) -> None:
        """Give the whole lease back at the next exchange, and take none in it."""
        if self.alone or self.local <= 0:
            return
        self.put += self.local
        self.local = 0.0
        self.releasing = True

    # --- the exchanger ------------------------------------------------------------------------

    def busy(self, now: float) -> bool:
        """Has this allowance anything for the store, or a reason to be kept?"""
        return bool(
            self.local > EPSILON
            or self.put
            or self.wanted > 0
            or self.open
            or self.sending is not None
            or self.alone
            or now - self.used_at < IDLE_S
        )

    def ask(self, now: float) -> LimitOp | None:
        """The op for the next exchange, or ``None`` when there is nothing to say.

        Marks the op as sent: answer with :meth:`granted` or :meth:`failed`.
        """
        if self.sending is not None or self.alone:
            return None
        self._pace(now)
        idle = now - self.used_at >= IDLE_S
        if idle and self.local > 0 and not self.wanted:
            self.put += self.local
            self.local = 0.0
        elif self.local > (self.target + self.wanted) * HIGH_WATER:
            excess = self.local - self.target - self.wanted
            if self.whole:
                excess = math.floor(excess)
            self.put += excess
            self.local -= excess
        take = 0.0
        releasing, self.releasing = self.releasing, False
        if (
            self.wanted > 0 or (not releasing and not idle and self.local < self.target * LOW_WATER)
        ) and (self.seen is None or self.shared_level(now) >= (1.0 if self.whole else EPSILON)):
            take = max(0.0, self.wanted + self.target - self.local)
            if self.whole:
                take = math.ceil(take - EPSILON)
        if take <= 0 and not self.put:
            return None
        op = LimitOp(self.scope, self.kind, self.capacity, self.rate, self.put, take, self.whole)
        self.put = 0.0
        self.sending = op
        return op

    def granted(self, grant: LimitGrant, now: float) -> None:
        self.sending = None
        self.local += grant.granted
        self.seen = grant.level
        self.seen_at = now

    def failed(self) -> None:
        """The exchange did not happen: what it was to give back or charge stays to send."""
        if self.sending is not None:
            self.put += self.sending.put
            self.sending = None

    def _pace(self, now: float) -> None:
        """Measure the key's pace; size the lease to about :data:`LEASE_S` of it.

        The pace goes up at once and down smoothly. A lease spent in under a quarter
        of :data:`LEASE_S` doubles the target before the pace shows it (a key going
        from quiet to busy reaches its size in a few exchanges, not one per request).
        """
        elapsed = now - self.window_at
        if elapsed >= PACE_WINDOW_S:
            measured = self.spent / elapsed
            self.pace = measured if measured > self.pace else 0.5 * (self.pace + measured)
            self.spent = 0.0
            self.window_at = now
            if self.window_unit:
                self.unit = max(self.window_unit, 0.5 * self.unit)
                self.window_unit = 0.0
        if self.kind == BUCKET:
            ceiling = self.capacity * MAX_SHARE
        else:
            ceiling = max(0.0, self.shared_level(now)) * MAX_SHARE
        unit = min(self.unit, self.capacity)
        target = max(self.pace * LEASE_S, unit)
        if (
            self.seen is not None
            and now - self.seen_at < LEASE_S / 4
            and self.local < self.target * LOW_WATER
        ):
            target = max(target, 2 * self.target)
        target = min(target, max(unit, ceiling))
        self.target = math.ceil(target - EPSILON) if self.whole else target

    # --- the store away -----------------------------------------------------------------------

    def go_alone(self, now: float) -> None:
        """The store cannot be reached: enforce the limit on this process's traffic alone."""
        if self.alone:
            return
        self.failed()
        self.alone = True
        self.alone_at = now
        self.alone_lease = self.local
        self.alone_spent = 0.0
        level = self.local + max(0.0, self.shared_level(now))
        self.local = min(self.capacity, level) if self.kind == BUCKET else level

    def back(self) -> None:
        """The store answers again: share the limit again (see the module docstring)."""
        if not self.alone:
            return
        self.alone = False
        if self.kind == COUNTER:
            # Give back the lease held when it went away, or charge what was spent beyond it.
            self.put += self.alone_lease - self.alone_spent
        self.local = 0.0
        self.seen = None
        self.alone_lease = self.alone_spent = 0.0


# --- periods -----------------------------------------------------------------------------


def period_of(period: BudgetPeriod, wall: float) -> tuple[str, float]:
    """The label of the budget period holding wall-clock time ``wall``, and when it ends."""
    if period is BudgetPeriod.LIFETIME:
        return "lifetime", math.inf
    tm = time.gmtime(wall)
    if period is BudgetPeriod.DAY:
        start = calendar.timegm((tm.tm_year, tm.tm_mon, tm.tm_mday, 0, 0, 0))
        return f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}", start + 86_400.0
    year, month = (tm.tm_year + 1, 1) if tm.tm_mon == 12 else (tm.tm_year, tm.tm_mon + 1)
    return f"{tm.tm_year:04d}-{tm.tm_mon:02d}", float(calendar.timegm((year, month, 1, 0, 0, 0)))


def day_of(wall: float) -> tuple[str, float]:
    """``YYYY-MM-DD`` (UTC) of ``wall``, and when that day ends."""
    return period_of(BudgetPeriod.DAY, wall)


# --- cost ----------------------------------------------------------------------------------


def cost_of(usage: Usage, price: Price | None) -> float:
    """What ``usage`` costs at ``price`` (per million tokens; ``None``: unpriced, 0).

    ``(input - cached) * input + cached * cached + output * output``; what the
    provider did not say counts as none.
    """
    if price is None:
        return 0.0
    given = usage.input_tokens or 0
    cached = min(usage.cached_tokens or 0, given)
    cached_price = price.input if price.cached is None else price.cached
    return (
        (given - cached) * price.input
        + cached * cached_price
        + (usage.output_tokens or 0) * price.output
    ) / PER_PRICE


# --- a key's policy, compiled at configuration time ---------------------------------------------


@attrs.frozen
class KeyPolicy:
    """What the request path checks for one key; built when the configuration changes.

    ``models``: the models the key may ask for (``None``: any). ``prices``: the
    gateway's table; ``top_price`` is charged to a cost budget for a model that has
    no price, so an unpriced model cannot escape the budget.
    """

    key_id: str
    gateway_id: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget: Budget | None = None
    models: frozenset[str] | None = None
    prices: Mapping[str, Price] = attrs.field(factory=dict)
    top_price: Price | None = None

    @classmethod
    def compile(cls, key: ApiKey, gateway: Gateway | None) -> KeyPolicy:
        limits = effective_limits(key, gateway)
        models = effective_models(key, gateway)
        prices = dict(gateway.prices) if gateway is not None else {}
        top = None
        if prices:
            top = Price(
                input=max(p.input for p in prices.values()),
                output=max(p.output for p in prices.values()),
            )
        return cls(
            key_id=key.id,
            gateway_id=key.gateway_id,
            requests_per_minute=limits.requests_per_minute if limits else None,
            tokens_per_minute=limits.tokens_per_minute if limits else None,
            budget=limits.budget if limits else None,
            models=frozenset(models) if models is not None else None,
            prices=prices,
            top_price=top,
        )

    @property
    def limited(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.budget is not None
        )

    @property
    def counts_tokens(self) -> bool:
        """Does a request need a token estimate (a token limit or any budget)?"""
        return self.tokens_per_minute is not None or self.budget is not None

    def allows(self, model: str | None) -> bool:
        """May the key use ``model``? (A request naming no model: checked on what is sent.)"""
        return self.models is None or model is None or model in self.models

    def price(self, model: str | None) -> Price | None:
        return self.prices.get(model) if model is not None else None

    def budget_price(self, model: str | None) -> Price | None:
        """The price a cost budget charges: the model's, else the table's highest."""
        return self.prices.get(model, self.top_price) if model is not None else self.top_price

    def cost_estimate(self, estimate: Estimate, model: str | None) -> float:
        return cost_of(
            Usage(estimate.input_tokens, estimate.output_tokens), self.budget_price(model)
        )


# --- refusals --------------------------------------------------------------------------------


def model_not_allowed(model: str, openai: bool) -> ModelNotAllowed:
    """The refusal of ``model`` in the client's dialect's convention (OpenAI: 404)."""
    if openai:
        error = ModelNotAllowed(
            f"The model '{model}' does not exist or this API key does not have access to it"
        )
        error.status = 404  # type: ignore[misc]
        error.type = "model_not_found"  # type: ignore[misc]
        return error
    return ModelNotAllowed(f"this API key may not use the model '{model}'")


# --- a key in this process ----------------------------------------------------------------------


@attrs.define(eq=False)
class Ticket:
    """One admitted request: what it reserved, settled once with what it used."""

    key: KeyState | None
    key_id: str
    gateway_id: str
    model: str | None
    estimate: Estimate | None = None
    requests: Allowance | None = None
    tokens: Allowance | None = None
    tokens_reserved: float = 0.0
    budget_tokens: Allowance | None = None
    budget_tokens_reserved: float = 0.0
    budget_cost: Allowance | None = None
    budget_cost_reserved: float = 0.0
    settled: bool = False


@attrs.frozen
class Shortfall:
    """A request that may pass after the next exchange: the allowances it waits for."""

    waiting: tuple[tuple[Allowance, float], ...]


class Allowances:
    """Every allowance of this process, by scope: the exchanger's worklist.

    A scope has one allowance however many times it is asked for, so a key
    reconfigured (or a budget rolled over, or a key deleted) keeps its lease until
    the exchanger has given it back; :meth:`prune` forgets those with nothing left.
    """

    def __init__(self) -> None:
        self.by_scope: dict[str, Allowance] = {}
        #: The store is away (since this time): new allowances start alone too.
        self.alone_since: float | None = None

    def _new(self, allowance: Allowance) -> Allowance:
        self.by_scope[allowance.scope] = allowance
        if self.alone_since is not None:
            allowance.go_alone(self.alone_since)
        return allowance

    def go_alone(self, now: float) -> None:
        self.alone_since = now
        for allowance in self.by_scope.values():
            allowance.go_alone(now)

    def back(self) -> None:
        self.alone_since = None
        for allowance in self.by_scope.values():
            allowance.back()

    def bucket(self, scope: str, per_minute: float) -> Allowance:
        found = self.by_scope.get(scope)
        if found is None:
            found = self._new(Allowance.bucket(scope, per_minute))
        else:
            found.reconfigure(per_minute, per_minute / SECONDS_PER_MINUTE)
            found.retired = False
        return found

    def counter(self, scope: str, limit: float, *, whole: bool) -> Allowance:
        found = self.by_scope.get(scope)
        if found is None:
            found = self._new(Allowance.counter(scope, limit, whole=whole))
        else:
            found.reconfigure(limit, 0.0)
            found.retired = False
        return found

    def prune(self, now: float) -> None:
        """Forget retired allowances that have nothing left to give back or settle."""
        idle = [s for s, a in self.by_scope.items() if a.retired and not a.busy(now)]
        for scope in idle:
            del self.by_scope[scope]

    def __iter__(self) -> Iterator[Allowance]:
        return iter(list(self.by_scope.values()))

    def __len__(self) -> int:
        return len(self.by_scope)


@attrs.define(eq=False)
class KeyState:
    """One key's allowances in this process, and its request-path decisions. Sans-IO.

    The runtime keeps one per limited key and calls :meth:`reconfigure` when the
    configuration changes; budgets roll over by period on their own (:meth:`roll`).
    """

    policy: KeyPolicy
    registry: Allowances
    requests: Allowance | None = None
    tokens: Allowance | None = None
    budget_tokens: Allowance | None = None
    budget_cost: Allowance | None = None
    #: The budget period's label (``2026-05``) and when it ends (wall clock).
    period: str = ""
    period_ends: float = -math.inf

    @classmethod
    def of(cls, policy: KeyPolicy, registry: Allowances) -> KeyState:
        state = cls(policy, registry)
        state.reconfigure(policy)
        return state

    def reconfigure(self, policy: KeyPolicy) -> None:
        """Adopt ``policy``; a limit that stays keeps its lease (the same scope)."""
        before = self.allowances()
        self.policy = policy
        key, rpm, tpm = policy.key_id, policy.requests_per_minute, policy.tokens_per_minute
        self.requests = self.registry.bucket(f"rpm:{key}", rpm) if rpm is not None else None
        self.tokens = self.registry.bucket(f"tpm:{key}", tpm) if tpm is not None else None
        self.budget_tokens = self.budget_cost = None
        self.period, self.period_ends = "", -math.inf  # the next request rolls in
        self._retire(before)

    def retire(self) -> None:
        """The key is gone (or no longer limited): its leases are given back, then forgotten."""
        self._retire(self.allowances(), keep=())

    def _retire(self, before: list[Allowance], keep: Iterable[Allowance] | None = None) -> None:
        kept = {id(a) for a in (self.allowances() if keep is None else keep)}
        for allowance in before:
            if id(allowance) not in kept:
                allowance.retired = True

    def roll(self, wall: float) -> None:
        """Take the budget counters of the period holding ``wall`` when it has changed."""
        budget = self.policy.budget
        if budget is None or wall < self.period_ends:
            return
        label, self.period_ends = period_of(budget.period, wall)
        self.period = label
        key = self.policy.key_id
        before = [a for a in (self.budget_tokens, self.budget_cost) if a is not None]
        self.budget_tokens = (
            self.registry.counter(f"bt:{key}:{label}", budget.tokens, whole=True)
            if budget.tokens is not None
            else None
        )
        self.budget_cost = (
            self.registry.counter(f"bc:{key}:{label}", budget.cost, whole=False)
            if budget.cost is not None
            else None
        )
        self._retire(before)

    def allowances(self) -> list[Allowance]:
        return [
            a
            for a in (self.requests, self.tokens, self.budget_tokens, self.budget_cost)
            if a is not None
        ]

    def needs(self, estimate: Estimate | None, model: str | None) -> list[tuple[Allowance, float]]:
        """What a request takes from each allowance.

        ``tokens_per_minute`` takes the estimate capped at the limit: a request larger
        than a minute's worth passes on a full bucket (and leaves it in debt).
        """
        wants: list[tuple[Allowance, float]] = []
        if self.requests is not None:
            wants.append((self.requests, 1.0))
        if estimate is not None:
            total = float(estimate.total)
            if self.tokens is not None:
                wants.append((self.tokens, min(total, self.tokens.capacity)))
            # A budget does not refill: a request that may take more than is left waits
            # for the next period, so that usage within its estimate never overshoots.
            if self.budget_tokens is not None:
                wants.append((self.budget_tokens, total))
            if self.budget_cost is not None:
                wants.append((self.budget_cost, self.policy.cost_estimate(estimate, model)))
        return wants

    def admit(
        self, estimate: Estimate | None, model: str | None, now: float, wall: float
    ) -> Ticket | Shortfall:
        """Reserve what the request needs from every limit, or say why not.

        Returns a :class:`Ticket` (everything reserved) or a :class:`Shortfall`
        (wait for the next exchange, then call again); raises
        :class:`KeyLimitExceeded` when no exchange can help before ``Retry-After``.
        """
        self.roll(wall)
        wants = self.needs(estimate, model)
        short = [(a, n) for a, n in wants if not a.has(n, now)]
        if short:
            hopeless = [(a, n) for a, n in short if not a.may_get(n, now)]
            if hopeless:
                raise self._refusal(hopeless, now, wall)
            return Shortfall(tuple(short))
        ticket = Ticket(self, self.policy.key_id, self.policy.gateway_id, model, estimate)
        for allowance, n in wants:
            allowance.spend(n, now)
            if allowance is self.requests:
                ticket.requests = allowance
            elif allowance is self.tokens:
                ticket.tokens, ticket.tokens_reserved = allowance, n
            elif allowance is self.budget_tokens:
                ticket.budget_tokens, ticket.budget_tokens_reserved = allowance, n
            else:
                ticket.budget_cost, ticket.budget_cost_reserved = allowance, n
        return ticket

    def check(
        self, estimate: Estimate | None, model: str | None, now: float, wall: float
    ) -> KeyLimitExceeded | None:
        """What :meth:`admit` would refuse now, reserving nothing (``explain``).

        ``None``: the request would pass, at once or after the next exchange.
        """
        self.roll(wall)
        hopeless = [
            (a, n)
            for a, n in self.needs(estimate, model)
            if not a.has(n, now) and not a.may_get(n, now)
        ]
        return self._refusal(hopeless, now, wall) if hopeless else None

    def refuse(self, shortfall: Shortfall, now: float, wall: float) -> KeyLimitExceeded:
        """The refusal of a request still short after its exchange."""
        short = [(a, n) for a, n in shortfall.waiting if not a.has(n, now)]
        return self._refusal(short or list(shortfall.waiting), now, wall)

    def _refusal(
        self, short: list[tuple[Allowance, float]], now: float, wall: float
    ) -> KeyLimitExceeded:
        policy = self.policy
        for allowance, n in short:
            if allowance is self.budget_tokens or allowance is self.budget_cost:
                return self._budget_refusal(allowance, n, now, wall)
        allowance, n = max(short, key=lambda pair: pair[0].wait_s(pair[1], now))
        # Zero: the row had room as last seen, but other processes took it first.
        wait = allowance.wait_s(n, now) or 1.0
        retry = max(1, math.ceil(wait - EPSILON))
        if allowance is self.requests:
            return KeyLimitExceeded(
                f"rate limit reached for this API key: {policy.requests_per_minute} requests "
                f"per minute; retry in {retry} s",
                limit="requests",
                retry_after=wait,
            )
        left = int(allowance.remaining(now))
        return KeyLimitExceeded(
            f"rate limit reached for this API key: {policy.tokens_per_minute} tokens per "
            f"minute, {left} left now, and this request may use up to {int(n)} (its prompt "
            f"and max_tokens); retry in {retry} s",
            limit="tokens",
            retry_after=wait,
        )

    def _budget_refusal(
        self, allowance: Allowance, n: float, now: float, wall: float
    ) -> BudgetExhausted:
        budget = self.policy.budget
        assert budget is not None
        if budget.period is BudgetPeriod.LIFETIME:
            when, retry = "it does not renew", None
        else:
            when = f"it renews at {_iso(self.period_ends)}"
            retry = self.period_ends - wall
        what = (
            f"{budget.tokens} tokens"
            if allowance is self.budget_tokens
            else f"a cost of {_number(budget.cost or 0)}"
        )
        per = "" if budget.period is BudgetPeriod.LIFETIME else f" per {budget.period.value}"
        left = round(allowance.remaining(now), 6)
        if left < (1 if allowance.whole else 1e-6):
            state = "is used up"
        else:
            need = (
                f"{_number(math.ceil(n))} tokens" if allowance.whole else f"{_number(round(n, 6))}"
            )
            state = (
                f"has {_number(left)} left and this request may need {need} (its prompt "
                "and max_tokens: a lower max_tokens may fit)"
            )
        return BudgetExhausted(
            f"this API key's budget of {what}{per} {state}; {when}",
            limit="budget",
            retry_after=retry,
        )

    def settle(self, ticket: Ticket, usage: Usage | None, model: str | None) -> float:
        """Settle ``ticket`` once with what the providers reported; return the cost.

        ``usage`` ``None``: the provider answered without saying: the estimate is
        charged. ``model``: the model that answered (its price; else the requested one).
        """
        ticket.settled = True
        actual = usage
        if actual is None:
            est = ticket.estimate
            actual = Usage(est.input_tokens, est.output_tokens) if est else NOTHING
        total = float(actual.total)
        if ticket.requests is not None:
            ticket.requests.open -= 1
        if ticket.tokens is not None:
            ticket.tokens.adjust(ticket.tokens_reserved, total)
        if ticket.budget_tokens is not None:
            ticket.budget_tokens.adjust(ticket.budget_tokens_reserved, total)
        priced = model or ticket.model
        if ticket.budget_cost is not None:
            charged = cost_of(actual, self.policy.budget_price(priced))
            ticket.budget_cost.adjust(ticket.budget_cost_reserved, charged)
        return cost_of(actual, self.policy.price(priced))

    def cancel(self, ticket: Ticket) -> None:
        """A ticket whose request never went out: every reservation back, the request too."""
        ticket.settled = True
        for allowance, reserved in (
            (ticket.requests, 1.0),
            (ticket.tokens, ticket.tokens_reserved),
            (ticket.budget_tokens, ticket.budget_tokens_reserved),
            (ticket.budget_cost, ticket.budget_cost_reserved),
        ):
            if allowance is not None:
                allowance.cancel(reserved)

    # --- response headers -----------------------------------------------------------------------

    def headers(self, openai: bool, now: float, wall: float) -> list[tuple[str, str]]:
        """The rate-limit headers of a response, in the client's dialect's names.

        OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (reset as a
        duration, ``6s``, ``1m0s``). Anthropic: ``anthropic-ratelimit-{requests,tokens}-
        {limit,remaining,reset}`` (reset as an RFC 3339 time). Budgets:
        ``x-gateway-budget-remaining-{tokens,cost}`` in both.
        """
        out: list[tuple[str, str]] = []
        policy = self.policy
        for allowance, limit, what in (
            (self.requests, policy.requests_per_minute, "requests"),
            (self.tokens, policy.tokens_per_minute, "tokens"),
        ):
            if allowance is None:
                continue
            remaining = str(int(allowance.remaining(now) + EPSILON))
            reset = allowance.full_in(now)
            if openai:
                out += [
                    (f"x-ratelimit-limit-{what}", str(limit)),
                    (f"x-ratelimit-remaining-{what}", remaining),
                    (f"x-ratelimit-reset-{what}", duration(reset)),
                ]
            else:
                out += [
                    (f"anthropic-ratelimit-{what}-limit", str(limit)),
                    (f"anthropic-ratelimit-{what}-remaining", remaining),
                    (f"anthropic-ratelimit-{what}-reset", _iso(wall + reset)),
                ]
        if self.budget_tokens is not None:
            left = max(0.0, self.budget_tokens.remaining(now))
            out.append(("x-gateway-budget-remaining-tokens", str(int(left + EPSILON))))
        if self.budget_cost is not None:
            left = max(0.0, self.budget_cost.remaining(now))
            out.append(("x-gateway-budget-remaining-cost", _number(round(left, 6))))
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset durations: ``20ms``, ``6s``, ``1.5s``, ``1m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def _iso(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(wall)))


def _number(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"
