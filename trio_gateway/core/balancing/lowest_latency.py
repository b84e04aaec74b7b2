"""Lowest latency: the smallest peak-EWMA time to first byte, scaled by load.

Cost is ``estimate * (in_flight + 1)``. A member never measured costs 0, so new
and re-admitted targets are tried first; estimates decay while a member is idle
(:class:`~trio_gateway.core.balancing.latency.PeakEwma`), so a member that was
slow is measured again after a while instead of being shunned for ever.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trio_gateway.core.balancing.round_robin import next_in_rotation


class LowestLatency:
    def __init__(self, size: int) -> None:
        self._size = size
        self._next = 0

    def pick(self, eligible: Sequence[int], loads: Sequence[Any], now: float) -> int:
        costs = {}
        for index in eligible:
            load = loads[index]
            estimate = load.latency(now)
            costs[index] = 0.0 if estimate is None else estimate * (load.in_flight + 1)
        best = min(costs.values())
        chosen = next_in_rotation([i for i in eligible if costs[i] == best], self._next)
        self._next = (chosen + 1) % self._size
        return chosen
