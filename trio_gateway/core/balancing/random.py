"""Weighted random choice; seed the generator for reproducible tests."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


class WeightedRandom:
    def __init__(self, weights: Sequence[int], rng: random.Random) -> None:
        self._weights = list(weights)
        self._rng = rng

    def pick(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        return self._choose(eligible, self._rng.random())

    def peek(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        """What :meth:`pick` will answer: the generator's next number, read from a copy."""
        ahead = random.Random()
        ahead.setstate(self._rng.getstate())
        return self._choose(eligible, ahead.random())

    def _choose(self, eligible: Sequence[int], draw: float) -> int:
        weights = self._weights
        point = draw * sum(weights[i] for i in eligible)
        for index in eligible:
            point -= weights[index]
            if point < 0:
                return index
        return eligible[-1]
