"""Least connections: the fewest requests in flight per unit of weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trio_gateway.core.balancing.round_robin import next_in_rotation


class LeastConnections:
    """Minimises ``(in_flight + 1) / weight``; ties rotate so idle members share work."""

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._next = 0

    def pick(self, eligible: Sequence[int], loads: Sequence[Any], now: float = 0.0) -> int:
        chosen = self.peek(eligible, loads)
        self._next = (chosen + 1) % len(self._weights)
        return chosen

    def peek(self, eligible: Sequence[int], loads: Sequence[Any], now: float = 0.0) -> int:
        weights = self._weights
        best_cost = min((loads[i].in_flight + 1) / weights[i] for i in eligible)
        tied = [i for i in eligible if (loads[i].in_flight + 1) / weights[i] == best_cost]
        return next_in_rotation(tied, self._next)
