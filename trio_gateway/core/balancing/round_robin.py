"""Round-robin: each eligible member in turn, weights ignored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RoundRobin:
    """Rotates over the members in configuration order, skipping the ineligible.

    The cursor is the member after the last one picked, so a member that comes
    back from ejection takes its place in the rotation at once.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._next = 0

    def pick(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        chosen = self.peek(eligible)
        self._next = (chosen + 1) % self._size
        return chosen

    def peek(self, eligible: Sequence[int], loads: Sequence[Any] = (), now: float = 0.0) -> int:
        return next_in_rotation(eligible, self._next)


def next_in_rotation(eligible: Sequence[int], cursor: int) -> int:
    """The first of ``eligible`` (sorted) at or after ``cursor``, wrapping around."""
    for index in eligible:
        if index >= cursor:
            return index
    return eligible[0]
