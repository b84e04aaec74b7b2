"""How committed streams end: their providers' idle timers, and the end of a shutdown.

Theory of operation
-------------------
A committed stream (``target._Relay.pump``) waits for its provider once per event
and sends each event to its client in between, all in the requester's task. A wait
must end when the provider has sent no content for the idle budget (the attempt
budget's ``timer``, moved on by every content event and by the time the client
took to take what it was sent) or at the shutdown's last
moment (:meth:`EndStreams.set`); a send to the client is never interrupted by
either (a cut send could lose an event the client was owed).

A cancel scope with the timer as deadline around each wait says exactly that, and
costs about 6 µs per event (its enter and exit, and the deadline's trip through
Trio's heap): measured as 4 % of a translated stream's whole CPU. So a stream
enters one cancel scope, without a deadline, for its whole life
(:meth:`EndStreams.follow` gives a :class:`StreamWait`) and only says when it is
waiting; one watcher task keeps the timers of every stream of an
:class:`EndStreams`:

* the streams sit in a heap under the timer they had when last looked at;
* the watcher sleeps until the earliest. Then a stream whose timer moved meanwhile
  (content came, or its client was slow) goes back into the heap under its new
  timer; a stream whose timer has come has its scope cancelled if it is waiting.
  One that is sending leaves the heap: before it waits again
  (:meth:`StreamWait.over`), it ends if its timer is still past, and otherwise (a
  slow client's time does not count, ``AttemptBudget.paused``) goes back in;
* a stream that ended is dropped when it comes up, and the heap is rebuilt without
  the ended ones when they outnumber the live ones, so it holds
  ``O(streams open)`` entries.

Per event a stream writes two attributes and compares its timer with the clock;
per stream it pushes onto the heap once, plus once per idle period it lasts.

The watcher is a Trio *system task*, started by the first stream that needs it in
a run and ending by itself after :data:`LINGER_S` without any stream: streams are
relayed by the runtime, by a dispatcher built alone (tests) and by a target's
recovery check, and a watcher that belongs to none of them can serve all three.
It holds nothing and raises nothing (a system task's exception would end the run).
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

#: How long the watcher stays without any stream before it ends.
LINGER_S = 30.0
#: The heap is rebuilt without ended streams once it holds this many more entries than
#: streams (and more than twice as many).
_SLACK = 64


class _Timer(Protocol):
    timer: float


class StreamWait:
    """One committed stream's waits for its provider (see the module docstring).

    ``scope``: enter it once around the stream's waits and sends; it is cancelled only
    while ``waiting`` is true. Before each wait, :meth:`over` says whether the stream
    must end instead; :meth:`EndStreams.forget` it when the stream is over.
    """

    __slots__ = ("_end", "budget", "done", "scope", "waiting", "watched")

    def __init__(self, end: EndStreams, budget: _Timer) -> None:
        self._end = end
        self.budget = budget
        self.scope = trio.CancelScope()
        self.waiting = False
        self.done = False
        #: In the watcher's heap (it leaves when its timer comes while it sends).
        self.watched = True

    def over(self) -> bool:
        """The shutdown's last moment came, or the budget's timer: do not wait again."""
        end = self._end
        if end._set or trio.current_time() >= self.budget.timer:
            return True
        if not self.watched:
            end._watch(self)
        return False


class EndStreams:
    """The idle timers of a runtime's committed streams, and its "end every stream now"
    signal: :meth:`set`, once, never cleared."""

    def __init__(self) -> None:
        self._set = False
        self._heap: list[tuple[float, int, StreamWait]] = []
        self._order = itertools.count()
        self._live = 0
        #: The watcher's sleep while it sleeps; ``None``: no watcher is running.
        self._sleep: trio.CancelScope | None = None
        self._watching = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """End every stream: those waiting now at once, the others before their next wait."""
        self._set = True
        for _, _, wait in self._heap:
            if wait.waiting and not wait.done:
                wait.scope.cancel()

    def follow(self, budget: _Timer) -> StreamWait:
        """Keep ``budget.timer`` for a stream from now until :meth:`forget`."""
        wait = StreamWait(self, budget)
        self._live += 1
        self._watch(wait)
        return wait

    def _watch(self, wait: StreamWait) -> None:
        """Put ``wait`` into the heap under its timer; wake the watcher earlier for it."""
        timer = wait.budget.timer
        wait.watched = True
        heapq.heappush(self._heap, (timer, next(self._order), wait))
        if not self._watching:
            self._watching = True
            trio.lowlevel.spawn_system_task(self._watcher, name="trio_gateway.end_streams")
        elif self._sleep is not None and timer < self._sleep.deadline:
            self._sleep.deadline = timer

    def forget(self, wait: StreamWait) -> None:
        """The stream is over (however it ended)."""
        if wait.done:
            return
        wait.done = True
        self._live -= 1
        heap = self._heap
        if len(heap) > 2 * self._live + _SLACK:
            self._heap = [entry for entry in heap if not entry[2].done]
            heapq.heapify(self._heap)
        if not self._live and self._sleep is not None and self._sleep.deadline == math.inf:
            self._sleep.deadline = trio.current_time() + LINGER_S  # it slept for one stream

    def statistics(self) -> dict[str, int]:
        return {"streams": self._live, "heap": len(self._heap)}

    async def _watcher(self) -> None:
        try:
            while True:
                now = trio.current_time()
                self._expire(now)
                if self._heap:
                    deadline = self._heap[0][0]
                elif self._live:
                    deadline = math.inf  # streams that left while sending come back if needed
                else:
                    deadline = now + LINGER_S
                with trio.CancelScope(deadline=deadline) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                if not self._live and not self._heap:
                    return  # nothing to keep for a while: a later stream starts another
        finally:
            self._sleep = None
            self._watching = False

    def _expire(self, now: float) -> None:
        """End the waits whose timer has come; put the others back under their timer."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, wait = heapq.heappop(heap)
            if wait.done:
                continue
            timer = wait.budget.timer
            if timer > now:
                heapq.heappush(heap, (timer, next(self._order), wait))
            elif wait.waiting:
                wait.scope.cancel()
            else:  # sending: it looks at its timer before it waits again
                wait.watched = False
