"""This process's side of the per-key limits: leases, the exchanger, the usage flush.

Theory of operation
-------------------
The decisions are sans-IO (:mod:`trio_gateway.core.limits`); this module gives
them a clock, a store and a task. :class:`Limiter` holds a
:class:`~trio_gateway.core.limits.KeyState` per limited key (rebuilt by
:meth:`Limiter.update` when the configuration changes) and every allowance of the
process in one :class:`~trio_gateway.core.limits.Allowances` registry.

* **The request path** (:meth:`Limiter.admit`, :meth:`Limiter.settle`) spends and
  settles leases in memory. It awaits nothing, except when a request finds a
  lease short and the shared row may still have room: then it waits for the next
  exchange (at most :data:`WAIT_S`), which every request short at that moment
  shares. A key that stays in use is refilled *before* its lease runs out (the
  exchanger is woken when a lease falls below half its target), so that happens
  at the first request after a quiet spell, and for small limits leased one
  request at a time.
* **The exchanger** (:meth:`Limiter.run`, owned by the runtime's nursery) runs a
  round when woken, and at least every :data:`TICK_S`: it asks every allowance
  what it has to say (:meth:`~trio_gateway.core.limits.Allowance.ask`), drains
  the usage book when :data:`FLUSH_S` has passed (or when it writes anyway), and
  sends all of it as one :meth:`~trio_gateway.store.Store.exchange_limits`
  transaction. One round at a time; a request arriving during a round waits for
  the next one.
* **The store away** (any exchange failing): every allowance goes *alone*
  (:meth:`~trio_gateway.core.limits.Allowance.go_alone`): the process enforces each
  limit on its own traffic (fail open with a local limit: at most N times a limit
  over N processes), the usage it could not write stays in the book. Every
  :data:`RETRY_S` the exchanger tries the store again; once it answers, the
  allowances share again and budgets are charged what was spent meanwhile.
* **Shutdown**: cancelled, :meth:`run` gives every lease back and flushes the
  usage, shielded for at most :data:`CLOSE_S`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import attrs
import trio

from trio_gateway.config.catalog import Snapshot
from trio_gateway.core.estimate import Estimate
from trio_gateway.core.limits import (
    COUNTER,
    Allowance,
    Allowances,
    KeyPolicy,
    KeyState,
    LimitOp,
    Shortfall,
    Ticket,
    cost_of,
    period_of,
    row_level,
)
from trio_gateway.core.usage import UsageBook, UsageRow
from trio_gateway.errors import KeyLimitExceeded
from trio_gateway.providers.usage import NOTHING, Usage
from trio_gateway.store import Store, StoreUnavailable

log = logging.getLogger("trio_gateway.limits")

#: The exchanger runs at least this often (returns idle leases, flushes usage).
TICK_S = 0.25
#: Usage is written to the store about this often.
FLUSH_S = 1.0
#: The longest a request waits for an exchange before it is refused.
WAIT_S = 1.0
#: While the store is away, it is tried again this often.
RETRY_S = 1.0
#: On shutdown: how long leases and usage may take to reach the store.
CLOSE_S = 2.0
#: Buckets untouched this long are deleted from the store (they are full), checked hourly.
PRUNE_IDLE_S = 86_400.0
PRUNE_EVERY_S = 3_600.0


@attrs.frozen
class LimiterStatistics:
    keys: int
    allowances: int
    exchanges: int
    failed_exchanges: int
    #: Whether the store is away and each limit is enforced by this process alone.
    alone: bool
    alone_since: float | None
    last_error: str | None
    usage_rows_pending: int


@attrs.frozen
class BudgetStatus:
    """A key's budget in the current period, as the store has it."""

    period: str
    label: str
    ends: float | None
    tokens_limit: int | None
    tokens_used: float | None
    cost_limit: float | None
    cost_used: float | None


class Charge:
    """One admitted request's account: what its attempts reported, settled once.

    The proxy opens it with the request's :class:`~trio_gateway.core.limits.Ticket`
    (:meth:`Limiter.charge`); the dispatcher tells it about each attempt as it goes
    (:meth:`sent`, :meth:`reported`); whoever sees the request end calls :meth:`end`
    (the dispatcher for a whole answer or an error, a stream's body after its last
    byte, whichever way it ends). Only the first :meth:`end` counts.

    What is settled (:meth:`Limiter.settle`), by the rules of docs/keys.md:

    * the sum of what every attempt's provider reported, failed attempts included
      (a failed-over request is charged once, for all of it);
    * the estimate (``None``) when the answer did not say, or when the request ended
      with an attempt still out (the client left mid-answer, a stream was cut): the
      provider may have used up to it;
    * nothing (:data:`~trio_gateway.providers.usage.NOTHING`) when no provider
      answered: its request still counts;
    * and when no attempt was ever made (no target could take it, the request was
      refused before any was), the ticket is cancelled: the request does not count.
    """

    __slots__ = ("_limiter", "cost", "model", "open", "ticket", "tried", "unreported", "usage")

    def __init__(self, limiter: Limiter, ticket: Ticket) -> None:
        self._limiter = limiter
        self.ticket = ticket
        #: What the attempts reported, summed (``None``: nothing yet).
        self.usage: Usage | None = None
        #: The model the request was last sent as (its price), else the one asked for.
        self.model = ticket.model
        #: An attempt is out and has not said how it ended.
        self.open = False
        #: The answer did not report its usage.
        self.unreported = False
        #: An attempt was made (or the gateway answered itself).
        self.tried = False
        #: What the request cost, once it has ended (``None`` before).
        self.cost: float | None = None

    def sent(self, model: str) -> None:
        """An attempt went out, sending ``model``."""
        self.tried = self.open = True
        self.model = model

    def reported(self, usage: Usage | None, *, answered: bool) -> None:
        """The attempt out ended: with the client's answer (``answered``) or not."""
        self.open = False
        if usage is not None and usage.reported:
            self.usage = usage if self.usage is None else self.usage + usage
        elif answered:
            self.unreported = True

    def end(self) -> float:
        """The request is over: settle it (once); return its cost."""
        cost = self.cost
        if cost is not None:
            return cost
        if not self.tried:
            self._limiter.cancel(self.ticket)
            cost = 0.0
        else:
            usage = None if self.open or self.unreported else (self.usage or NOTHING)
            cost = self._limiter.settle(self.ticket, usage, self.model)
        self.cost = cost
        return cost


class Limiter:
    """See the module docstring. Start with ``await nursery.start(limiter.run)``.

    ``clock``: monotonic seconds (Trio's by default, virtual in tests); ``wall``:
    seconds since the epoch (budget periods and usage days follow it).
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._clock = clock
        self._wall = wall
        self._offset = 0.0
        self.registry = Allowances()
        #: Limited keys by id; keys without limits have no state here.
        self.keys: dict[str, KeyState] = {}
        #: Every key's policy by id (models and prices matter without limits too).
        self.policies: dict[str, KeyPolicy] = {}
        self.book = UsageBook()
        self._wake = trio.Event()
        self._round = trio.Event()
        self._flushed_at = -math.inf
        self._pruned_at = -math.inf
        self._exchanges = 0
        self._failures = 0
        self._last_error: str | None = None
        self._alone_since_wall: float | None = None

    # --- the configuration -------------------------------------------------------------------

    def update(self, snapshot: Snapshot) -> None:
        """Compile every key's policy from ``snapshot``; synchronous, so the runtime can
        apply it with the route table it belongs to."""
        now = self._clock()
        policies = {
            key.id: KeyPolicy.compile(key, snapshot.gateways.get(key.gateway_id))
            for key in snapshot.api_keys.values()
        }
        keys: dict[str, KeyState] = {}
        for key_id, policy in policies.items():
            state = self.keys.get(key_id)
            if not policy.limited:
                continue
            if state is None:
                state = KeyState.of(policy, self.registry)
            elif state.policy != policy:
                state.reconfigure(policy)
            keys[key_id] = state
        for key_id, state in self.keys.items():
            if key_id not in keys:
                state.retire()
        self.policies, self.keys = policies, keys
        self.registry.prune(now)

    # --- the request path --------------------------------------------------------------------

    def wall(self, now: float) -> float:
        return self._offset + now

    def state(self, key_id: str) -> KeyState | None:
        return self.keys.get(key_id)

    async def admit(
        self, key_id: str, gateway_id: str, model: str | None, estimate: Estimate | None
    ) -> Ticket:
        """Reserve what a request of ``key_id`` needs; raise :class:`KeyLimitExceeded`.

        ``estimate``: needed when the key's policy ``counts_tokens``. Without limits
        the ticket only carries the usage to count.
        """
        state = self.keys.get(key_id)
        if state is None:
            return Ticket(None, key_id, gateway_id, model)
        now = self._clock()
        try:
            found = state.admit(estimate, model, now, self._offset + now)
            if isinstance(found, Shortfall):
                found = await self._wait(state, found, estimate, model, now)
        except KeyLimitExceeded:
            self.book.refuse(key_id, gateway_id, model, self._offset + self._clock())
            raise
        for allowance in state.allowances():
            if allowance.short():
                self._wake.set()
                break
        return found

    def check(
        self, key_id: str, model: str | None, estimate: Estimate | None
    ) -> KeyLimitExceeded | None:
        """The refusal :meth:`admit` would raise now, reserving and counting nothing."""
        state = self.keys.get(key_id)
        if state is None:
            return None
        now = self._clock()
        return state.check(estimate, model, now, self._offset + now)

    async def _wait(
        self,
        state: KeyState,
        shortfall: Shortfall,
        estimate: Estimate | None,
        model: str | None,
        now: float,
    ) -> Ticket:
        """Wait for exchanges until the request fits, or refuse it."""
        deadline = now + WAIT_S
        waiting = shortfall.waiting
        for allowance, n in waiting:
            allowance.wanted += n
        try:
            while True:
                self._wake.set()
                round_done = self._round
                with trio.move_on_at(deadline) as waited:
                    await round_done.wait()
                now = self._clock()
                wall = self._offset + now
                found = state.admit(estimate, model, now, wall)
                if isinstance(found, Ticket):
                    return found
                if waited.cancelled_caught:
                    raise state.refuse(found, now, wall)
        finally:
            for allowance, n in waiting:
                allowance.wanted -= n

    def settle(self, ticket: Ticket, usage: Usage | None, model: str | None = None) -> float:
        """Settle a request once it is over; return its cost (0 without a price).

        ``usage``: what the providers reported, summed over every attempt that
        reported any (a failed-over request is charged once, for all of it);
        ``NOTHING`` when no provider answered; ``None`` when one answered but
        did not say (the estimate is charged). ``model``: the model that answered.
        """
        if ticket.settled:
            return 0.0
        served = model or ticket.model
        if ticket.key is not None:
            cost = ticket.key.settle(ticket, usage, served)
        else:
            ticket.settled = True
            policy = self.policies.get(ticket.key_id)
            cost = 0.0
            if usage is not None and policy is not None and policy.prices:
                cost = cost_of(usage, policy.price(served))
        if usage is None and ticket.estimate is not None:
            usage = Usage(ticket.estimate.input_tokens, ticket.estimate.output_tokens)
        self.book.add(
            ticket.key_id, ticket.gateway_id, served, self._offset + self._clock(), usage, cost
        )
        return cost

    def charge(self, ticket: Ticket) -> Charge:
        """The account of an admitted request (see :class:`Charge`)."""
        return Charge(self, ticket)

    def cancel(self, ticket: Ticket) -> None:
        """The request never went out (refused before dispatch): give everything back."""
        if not ticket.settled and ticket.key is not None:
            ticket.key.cancel(ticket)
        ticket.settled = True

    def headers(self, ticket_or_key: Ticket | str, openai: bool) -> list[tuple[str, str]]:
        """The rate-limit headers for a response of this key (none for a key without limits)."""
        if isinstance(ticket_or_key, Ticket):
            state = ticket_or_key.key
        else:
            state = self.keys.get(ticket_or_key)
        if state is None:
            return []
        now = self._clock()
        return state.headers(openai, now, self._offset + now)

    # --- the exchanger -------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Limiter] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Exchange with the store until cancelled; then give the leases back (bounded)."""
        self._offset = self._wall() - self._clock()
        task_status.started(self)
        try:
            while True:
                with trio.move_on_after(
                    RETRY_S if self.registry.alone_since is not None else TICK_S
                ):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.exchange()
        finally:
            with trio.move_on_after(CLOSE_S, shield=True):
                await self._close()

    async def exchange(self) -> None:
        """One round: every allowance's op and the usage due, in one transaction."""
        now = self._clock()
        self._offset = self._wall() - now
        try:
            if self.registry.alone_since is not None:
                await self._try_back(now)
                if self.registry.alone_since is not None:
                    return
            owners: list[Allowance] = []
            ops: list[LimitOp] = []
            for allowance in self.registry:
                op = allowance.ask(now)
                if op is not None:
                    owners.append(allowance)
                    ops.append(op)
            rows: list[UsageRow] = []
            if len(self.book) and (ops or now - self._flushed_at >= FLUSH_S):
                rows = self.book.drain()
                self._flushed_at = now
            if not ops and not rows:
                return
            try:
                grants = await self._store.exchange_limits(ops, rows)
            except Exception as exc:
                for allowance in owners:
                    allowance.failed()
                self.book.restore(rows)
                self._lost(exc)
                return
            self._exchanges += 1
            now = self._clock()
            for allowance, grant in zip(owners, grants, strict=True):
                allowance.granted(grant, now)
        finally:
            self.registry.prune(now)
            self._round.set()
            self._round = trio.Event()
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            try:
                await self._store.prune_limits(PRUNE_IDLE_S)
            except Exception as exc:
                log.debug("pruning idle buckets failed", extra={"fields": {"error": str(exc)}})

    async def flush(self) -> None:
        """Write this process's usage now (the usage endpoint, before it reads)."""
        self._flushed_at = -math.inf
        await self.exchange()

    def _lost(self, exc: Exception) -> None:
        self._failures += 1
        self._last_error = str(exc) or type(exc).__name__
        if self.registry.alone_since is None:
            log.warning(
                "the store is unreachable: each key's limits are enforced by this process "
                "alone until it is back",
                extra={"fields": {"error": self._last_error}},
            )
            now = self._clock()
            self._alone_since_wall = self._offset + now
            self.registry.go_alone(now)

    async def _try_back(self, now: float) -> None:
        """While alone: is the store back? (A cheap read.)"""
        try:
            await self._store.read_limits(())
        except Exception as exc:
            self._failures += 1
            self._last_error = str(exc) or type(exc).__name__
            return
        log.warning("the store is reachable again: key limits are shared again")
        self.registry.back()
        self._alone_since_wall = None
        self._wake.set()

    async def _close(self) -> None:
        """Give every lease back and write the usage (shutdown)."""
        if self.registry.alone_since is not None:
            await self._try_back(self._clock())
            if self.registry.alone_since is not None:
                return
        ops = []
        for allowance in self.registry:
            if allowance.sending is not None:
                continue
            put = allowance.put + max(0.0, allowance.local)
            if put:
                ops.append(
                    LimitOp(
                        allowance.scope,
                        allowance.kind,
                        allowance.capacity,
                        allowance.rate,
                        put,
                        0.0,
                        allowance.whole,
                    )
                )
                allowance.put, allowance.local = 0.0, min(0.0, allowance.local)
        rows = self.book.drain()
        if ops or rows:
            try:
                await self._store.exchange_limits(ops, rows)
            except Exception as exc:
                log.warning(
                    "could not give the key limits' leases back on shutdown",
                    extra={"fields": {"error": str(exc) or type(exc).__name__}},
                )

    # --- reading -------------------------------------------------------------------------------

    async def usage(
        self, key_id: str, since: str | None = None, until: str | None = None
    ) -> list[UsageRow]:
        """The key's usage from the store, this process's included (flushed first).

        Raises :class:`~trio_gateway.store.StoreUnavailable` while the store is away
        (this process's usage is kept meanwhile, and written once it is back).
        """
        await self.flush()
        if self.registry.alone_since is not None:
            raise StoreUnavailable(
                "the store is unreachable, so the usage of every process cannot be read "
                "now (each keeps counting it, and writes it once the store is back); "
                "try again shortly"
            )
        return await self._store.read_usage(key_id, since, until)

    async def budget(self, key_id: str) -> BudgetStatus | None:
        """The key's budget in the current period, from the store; ``None`` without one."""
        policy = self.policies.get(key_id)
        if policy is None or policy.budget is None:
            return None
        state = self.keys.get(key_id)
        if state is not None:
            # This process's lease of the budget goes back first: "used" is then what was
            # spent, plus what other processes hold leased (at most a lease each).
            for allowance in (state.budget_tokens, state.budget_cost):
                if allowance is not None:
                    allowance.release()
        await self.flush()
        budget = policy.budget
        label, ends = period_of(budget.period, self._offset + self._clock())
        scopes = [f"bt:{key_id}:{label}", f"bc:{key_id}:{label}"]
        found = await self._store.read_limits(scopes)

        def used(scope: str, limit: float | None) -> float | None:
            if limit is None:
                return None
            return limit - row_level(found.rows.get(scope), COUNTER, limit, 0.0, found.now)

        return BudgetStatus(
            period=budget.period.value,
            label=label,
            ends=ends if math.isfinite(ends) else None,
            tokens_limit=budget.tokens,
            tokens_used=used(scopes[0], budget.tokens),
            cost_limit=budget.cost,
            cost_used=used(scopes[1], budget.cost),
        )

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            keys=len(self.keys),
            allowances=len(self.registry),
            exchanges=self._exchanges,
            failed_exchanges=self._failures,
            alone=self.registry.alone_since is not None,
            alone_since=self._alone_since_wall,
            last_error=self._last_error,
            usage_rows_pending=len(self.book),
        )
