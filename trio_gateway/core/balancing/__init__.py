"""Choosing one target among the eligible members of a priority tier. Sans-IO.

A balancer belongs to one tier of one upstream and lives as long as that
upstream's configuration. :meth:`Balancer.pick` gets the indexes of the members
eligible for this request (healthy, not yet tried, serving the model) and the
live load of every member; it returns one of the eligible indexes and updates
its own state (rotation, smooth-weight counters). It never sees a member that is
not eligible, so ejection and failover need nothing from it.

:meth:`Balancer.peek` answers what ``pick`` would answer for the same arguments,
without changing any state (``explain`` shows the next target with it): ``peek``
then ``pick`` give the same member.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import Protocol

from trio_gateway.config.models import Algorithm
from trio_gateway.core.balancing.latency import PeakEwma
from trio_gateway.core.balancing.least_connections import LeastConnections
from trio_gateway.core.balancing.lowest_latency import LowestLatency
from trio_gateway.core.balancing.random import WeightedRandom
from trio_gateway.core.balancing.round_robin import RoundRobin
from trio_gateway.core.balancing.weighted import SmoothWeighted


class Load(Protocol):
    """What a balancer may read of a member's live state."""

    @property
    def in_flight(self) -> int: ...

    def latency(self, now: float) -> float | None: ...


class Balancer(Protocol):
    def pick(self, eligible: Sequence[int], loads: Sequence[Load], now: float) -> int: ...

    def peek(self, eligible: Sequence[int], loads: Sequence[Load], now: float) -> int: ...


def make_balancer(
    algorithm: Algorithm, weights: Sequence[int], rng: _random.Random | None = None
) -> Balancer:
    """A fresh balancer for a tier whose members have ``weights``."""
    match algorithm:
        case Algorithm.ROUND_ROBIN:
            return RoundRobin(len(weights))
        case Algorithm.WEIGHTED:
            return SmoothWeighted(weights)
        case Algorithm.LEAST_CONNECTIONS:
            return LeastConnections(weights)
        case Algorithm.RANDOM:
            return WeightedRandom(weights, rng or _random.Random())
        case Algorithm.LOWEST_LATENCY:
            return LowestLatency(len(weights))
    raise ValueError(f"unknown algorithm {algorithm!r}")


__all__ = ["Balancer", "Load", "PeakEwma", "make_balancer"]
