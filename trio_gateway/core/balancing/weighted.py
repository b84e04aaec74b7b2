"""Smooth weighted round-robin (nginx's algorithm).

Each pick adds every eligible member's weight to its running score, takes the
member with the highest score and subtracts the eligible total from it. Over any
``sum(weights)`` consecutive picks with a fixed eligible set, each member is
picked exactly ``weight`` times, spread out rather than in bursts: 70/30 gives
7 and 3 in every 10 picks (scores scale with the weights, so 70/30 behaves like
7/3), and 50/50 alternates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SmoothWeighted:
    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._scores = [0] * len(weights)

    def peek(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        weights, scores = self._weights, self._scores
        best = eligible[0]
        best_score = None
        for index in eligible:
            score = scores[index] + weights[index]
            if best_score is None or score > best_score:
                best, best_score = index, score
        return best

    def pick(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        weights, scores = self._weights, self._scores
        total = 0
        best = eligible[0]
        best_score = None
        for index in eligible:
            weight = weights[index]
            total += weight
            score = scores[index] + weight
            scores[index] = score
            if best_score is None or score > best_score:
                best, best_score = index, score
        scores[best] -= total
        return best
