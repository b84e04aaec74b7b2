"""Lowest latency: the smallest peak-EWMA time to first byte, scaled by load.

Cost is ``estimate * (in_flight + 1)``. Estimates decay while a member is idle
(:class:`~trio_gateway.core.balancing.latency.PeakEwma`), so a member that was
slow is measured again after a while instead of being shunned for ever; failures
are measured too (their elapsed time, as a peak), so a target that times out is
expensive, not free.

A member never measured is explored one request at a time: while it has nothing
in flight it costs 0 (it goes first), and while its first request is out it costs
as much as the slowest measured member, so a new or re-admitted target does not
swallow every concurrent request before anyone knows its speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trio_gateway.core.balancing.round_robin import next_in_rotation

#: The stand-in estimate when no member has been measured yet, in seconds.
UNKNOWN_S = 1.0


class LowestLatency:
    def __init__(self, size: int) -> None:
        self._size = size
        self._next = 0

    def pick(self, eligible: Sequence[int], loads: Sequence[Any], now: float) -> int:
        chosen = self.peek(eligible, loads, now)
        self._next = (chosen + 1) % self._size
        return chosen

    def peek(self, eligible: Sequence[int], loads: Sequence[Any], now: float) -> int:
        estimates = {i: loads[i].latency(now) for i in eligible}
        known = [e for e in estimates.values() if e is not None]
        fallback = max(known) if known else UNKNOWN_S
        costs = {}
        for index, estimate in estimates.items():
            in_flight = loads[index].in_flight
            if estimate is None:
                costs[index] = 0.0 if in_flight == 0 else fallback * (in_flight + 1)
            else:
                costs[index] = estimate * (in_flight + 1)
        best = min(costs.values())
        return next_in_rotation([i for i in eligible if costs[i] == best], self._next)
