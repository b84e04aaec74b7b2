"""Which faults fire on a request: sans-IO, time passed in as ``now``.

Theory of operation
-------------------
A :class:`FaultPlan` holds the faults in effect, in order, each with its own
counters and the time it was set (``window`` and ``flapping`` are measured from
that time). For every request the server calls :meth:`FaultPlan.decide` once,
before doing anything else, and acts on the :class:`Decision` it returns; when it
is about to stream an answer (the request passed the provider's checks), it calls
:meth:`FaultPlan.decide_stream` for the :class:`StreamShape` of that stream. So a
stream fault is never spent on a request that gets no stream.

A fault *fires* on a request when, in this order:

1. the request is one it targets (``path``, ``model``, ``stream``; stream kinds
   target streaming requests only; an :class:`~trio_gateway.config.faults.InjectedFault`
   also by ``keys``, ``targets`` and ``attempts``);
2. ``now`` is inside its ``window`` and in a down phase of its ``flapping``;
3. it has already let ``skip`` such requests through (each request that passed 1
   and 2 counts as *matched*);
4. it has fired fewer than ``times`` times;
5. a draw from the plan's seeded RNG falls under ``probability`` (no draw when
   the probability is 1).

Faults fill *slots*; the first fault of the list that fires fills its slot and
later faults of the same slot are not evaluated (nor counted) for that request:

* ``response`` (error, rate_limit, hang, close, reset, hang_after_headers):
  replaces the answer (so no stream slot is evaluated for that request).
* ``latency``: a delay before the response headers; combines with any slot.
* stream slots, for streamed answers:
  ``first_token`` (slow_first_token), ``stall`` (stall_stream), ``malformed``
  (malformed_event) and ``end`` (error_event, cut_stream, no_terminator: the
  ways a stream can end badly).

So ``[error(503, times=1), error(500, times=1)]`` answers 503 then 500, and
``[latency(1), cut_stream()]`` delays every stream and then cuts it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import attrs

from trio_gateway.config.faults import (
    DEFAULT_AFTER_CHUNKS,
    STREAM_KINDS,
    Fault,
    FaultKind,
    InjectedFault,
)

RESPONSE, LATENCY, FIRST_TOKEN, STALL, MALFORMED, END = (
    "response",
    "latency",
    "first_token",
    "stall",
    "malformed",
    "end",
)

SLOTS: dict[FaultKind, str] = {
    FaultKind.ERROR: RESPONSE,
    FaultKind.RATE_LIMIT: RESPONSE,
    FaultKind.HANG: RESPONSE,
    FaultKind.CLOSE: RESPONSE,
    FaultKind.RESET: RESPONSE,
    FaultKind.HANG_AFTER_HEADERS: RESPONSE,
    FaultKind.LATENCY: LATENCY,
    FaultKind.SLOW_FIRST_TOKEN: FIRST_TOKEN,
    FaultKind.STALL_STREAM: STALL,
    FaultKind.MALFORMED_EVENT: MALFORMED,
    FaultKind.ERROR_EVENT: END,
    FaultKind.CUT_STREAM: END,
    FaultKind.NO_TERMINATOR: END,
}
_STREAM_SLOTS = (FIRST_TOKEN, STALL, MALFORMED, END)


@attrs.frozen
class RequestInfo:
    """What a fault can target: the path, the model asked for, and streaming or not.

    On live traffic (the gateway's fault injection) each attempt is a request, and
    says more: the client's API key (id and name), the target and the attempt's
    number in its request (from 1). ``path`` is ``None`` for the gateway's own
    health checks, which have no client path (nor key).
    """

    path: str | None
    model: str | None = None
    stream: bool = False
    key_id: str | None = None
    key_name: str | None = None
    target: str | None = None
    attempt: int = 1


@attrs.frozen
class Decision:
    """What to do before answering: wait ``delay``, then answer ``response`` if set."""

    delay: float = 0.0
    response: Fault | None = None
    fired: tuple[Fault, ...] = ()


@attrs.frozen
class StreamShape:
    """How to bend a streamed answer. Positions count the events before the terminator."""

    first_token_delay: float = 0.0
    stall: Fault | None = None
    malformed: Fault | None = None
    end: Fault | None = None
    fired: tuple[Fault, ...] = ()

    @property
    def stall_at(self) -> int | None:
        return _at(self.stall)

    @property
    def malformed_at(self) -> int | None:
        return _at(self.malformed)

    @property
    def end_at(self) -> int | None:
        """Events sent before the stream ends badly (``None``: at the terminator)."""
        if self.end is None or self.end.kind is FaultKind.NO_TERMINATOR:
            return None
        return _at(self.end)


NOTHING = Decision()
PLAIN = StreamShape()


def _at(fault: Fault | None) -> int | None:
    if fault is None:
        return None
    return DEFAULT_AFTER_CHUNKS if fault.after_chunks is None else fault.after_chunks


@attrs.frozen
class FaultStatistics:
    """A fault and how it fared: ``matched`` requests it targeted, ``fired`` on how many."""

    fault: Fault
    matched: int
    fired: int


def selects(fault: Fault, request: RequestInfo) -> bool:
    """Is ``request`` one that ``fault`` targets (before its window, counters and odds)?"""
    if fault.kind in STREAM_KINDS and not request.stream:
        return False
    if not (
        (fault.path is None or fault.path == request.path)
        and (fault.model is None or fault.model == request.model)
        and (fault.stream is None or fault.stream == request.stream)
    ):
        return False
    if not isinstance(fault, InjectedFault):
        return True
    return (
        (not fault.keys or request.key_id in fault.keys or request.key_name in fault.keys)
        and (not fault.targets or request.target in fault.targets)
        and (fault.attempts is None or request.attempt <= fault.attempts)
    )


@attrs.define
class _Entry:
    fault: Fault
    since: float
    matched: int = 0
    fired: int = 0

    def targets(self, request: RequestInfo) -> bool:
        return selects(self.fault, request)

    def active(self, now: float) -> bool:
        elapsed = now - self.since
        fault = self.fault
        if fault.window is not None and not fault.window.contains(elapsed):
            return False
        return fault.flapping is None or fault.flapping.is_down(elapsed)


@attrs.define
class FaultPlan:
    """The faults in effect and their counters. Not thread-safe; one owner (the server)."""

    rng: random.Random = attrs.field(factory=random.Random)
    _entries: list[_Entry] = attrs.field(factory=list)

    @classmethod
    def of(cls, faults: Iterable[Fault], *, now: float, seed: int = 0) -> FaultPlan:
        plan = cls(rng=random.Random(seed))
        plan.replace(faults, now=now)
        return plan

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(entry.fault for entry in self._entries)

    @property
    def shapes_streams(self) -> bool:
        """Does any fault shape streams (so :meth:`decide_stream` may return something)?"""
        return any(entry.fault.kind in STREAM_KINDS for entry in self._entries)

    def replace(self, faults: Iterable[Fault], *, now: float) -> None:
        """Put ``faults`` in effect from ``now``, with fresh counters."""
        self._entries = [_Entry(fault, now) for fault in faults]

    def add(self, fault: Fault, *, now: float) -> None:
        """Add ``fault`` after the others; its window and flapping start at ``now``."""
        self._entries.append(_Entry(fault, now))

    def statistics(self) -> tuple[FaultStatistics, ...]:
        return tuple(FaultStatistics(e.fault, e.matched, e.fired) for e in self._entries)

    def decide(self, request: RequestInfo, *, now: float) -> Decision:
        """The ``response`` and ``latency`` slots, for every request as it arrives."""
        if not self._entries:
            return NOTHING
        chosen = self._fill((RESPONSE, LATENCY), request, now)
        if not chosen:
            return NOTHING
        latency = chosen.get(LATENCY)
        response = chosen.get(RESPONSE)
        return Decision(
            delay=self.delay(latency.fault) if latency is not None else 0.0,
            response=response.fault if response is not None else None,
            fired=self._in_order(chosen),
        )

    def decide_stream(self, request: RequestInfo, *, now: float) -> StreamShape:
        """The stream slots, once a streamed answer is about to be sent."""
        if not self._entries or not request.stream:
            return PLAIN
        chosen = self._fill(_STREAM_SLOTS, request, now)
        if not chosen:
            return PLAIN
        faults = {slot: entry.fault for slot, entry in chosen.items()}
        first_token = faults.get(FIRST_TOKEN)
        return StreamShape(
            first_token_delay=(first_token.seconds or 0.0) if first_token is not None else 0.0,
            stall=faults.get(STALL),
            malformed=faults.get(MALFORMED),
            end=faults.get(END),
            fired=self._in_order(chosen),
        )

    def _in_order(self, chosen: dict[str, _Entry]) -> tuple[Fault, ...]:
        return tuple(e.fault for e in self._entries if any(e is c for c in chosen.values()))

    def _fill(self, slots: tuple[str, ...], request: RequestInfo, now: float) -> dict[str, _Entry]:
        chosen: dict[str, _Entry] = {}
        for entry in self._entries:
            slot = SLOTS[entry.fault.kind]
            if slot in slots and slot not in chosen and self._fires(entry, request, now):
                chosen[slot] = entry
        return chosen

    def _fires(self, entry: _Entry, request: RequestInfo, now: float) -> bool:
        if not entry.targets(request) or not entry.active(now):
            return False
        entry.matched += 1
        fault = entry.fault
        if entry.matched <= fault.skip:
            return False
        if fault.times is not None and entry.fired >= fault.times:
            return False
        if fault.probability < 1 and self.rng.random() >= fault.probability:
            return False
        entry.fired += 1
        return True

    def delay(self, fault: Fault) -> float:
        """A ``latency`` fault's delay: its ``seconds``, +/- a draw within its ``jitter``."""
        seconds = fault.seconds or 0.0
        if fault.jitter:
            seconds += self.rng.uniform(-fault.jitter, fault.jitter)
        return max(0.0, seconds)
