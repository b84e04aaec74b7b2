"""Balancers: exact weighted shares, rotation, load and latency awareness."""

from __future__ import annotations

import random
from collections import Counter
from math import gcd

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.config.models import Algorithm
from trio_gateway.core.balancing import PeakEwma, make_balancer


@attrs.define
class FakeLoad:
    in_flight: int = 0
    estimate: float | None = None

    def latency(self, now: float) -> float | None:
        return self.estimate


def picks(algorithm, weights, n, eligible=None, loads=None):
    balancer = make_balancer(algorithm, weights, random.Random(7))
    eligible = eligible or list(range(len(weights)))
    loads = loads or [FakeLoad() for _ in weights]
    return [balancer.pick(eligible, loads, 0.0) for _ in range(n)]


def test_weighted_70_30_is_exact_in_every_window_of_10():
    sequence = picks(Algorithm.WEIGHTED, [70, 30], 1000)
    for start in range(991):
        assert Counter(sequence[start : start + 10]) == {0: 7, 1: 3}
    assert "0,0,0,0,0,0,0" not in ",".join(map(str, sequence))  # interleaved, not bursts


def test_guide_50_50_alternates():
    assert picks(Algorithm.WEIGHTED, [50, 50], 6) == [0, 1, 0, 1, 0, 1]
    assert Counter(picks(Algorithm.ROUND_ROBIN, [50, 50], 1000)) == {0: 500, 1: 500}


@given(st.lists(st.integers(1, 100), min_size=1, max_size=6))
def test_smooth_weighted_shares_are_exact_per_period(weights):
    divisor = 0
    for w in weights:
        divisor = gcd(divisor, w)
    period = sum(w // divisor for w in weights)
    sequence = picks(Algorithm.WEIGHTED, weights, period * 3)
    for start in range(period * 2 + 1):
        counts = Counter(sequence[start : start + period])
        assert all(counts[i] == w // divisor for i, w in enumerate(weights))


def test_round_robin_skips_ineligible_and_keeps_its_place():
    balancer = make_balancer(Algorithm.ROUND_ROBIN, [1, 1, 1])
    loads = [FakeLoad()] * 3
    assert [balancer.pick([0, 1, 2], loads, 0) for _ in range(3)] == [0, 1, 2]
    assert [balancer.pick([0, 2], loads, 0) for _ in range(3)] == [0, 2, 0]
    assert balancer.pick([0, 1, 2], loads, 0) == 1


def test_least_connections_prefers_idle_and_scales_by_weight():
    loads = [FakeLoad(in_flight=3), FakeLoad(in_flight=1), FakeLoad(in_flight=1)]
    assert picks(Algorithm.LEAST_CONNECTIONS, [1, 1, 1], 4, loads=loads) == [1, 2, 1, 2]
    heavy = [FakeLoad(in_flight=4), FakeLoad(in_flight=1)]
    assert picks(Algorithm.LEAST_CONNECTIONS, [10, 1], 1, loads=heavy) == [0]


def test_random_is_weighted_and_seedable():
    first = picks(Algorithm.RANDOM, [80, 20], 2000)
    assert first == picks(Algorithm.RANDOM, [80, 20], 2000)
    share = Counter(first)[0] / 2000
    assert 0.75 < share < 0.85


def test_lowest_latency_explores_unmeasured_then_prefers_fast():
    loads = [FakeLoad(estimate=0.2), FakeLoad(estimate=None), FakeLoad(estimate=0.05)]
    assert picks(Algorithm.LOWEST_LATENCY, [1, 1, 1], 1, loads=loads) == [1]
    loads[1].estimate = 0.5
    assert picks(Algorithm.LOWEST_LATENCY, [1, 1, 1], 3, loads=loads) == [2, 2, 2]
    loads[2].in_flight = 9  # 0.05 * 10 = 0.5 > 0.2
    assert picks(Algorithm.LOWEST_LATENCY, [1, 1, 1], 1, loads=loads) == [0]


def test_peak_ewma_jumps_up_decays_down():
    ewma = PeakEwma(tau=10.0)
    assert ewma.estimate(0.0) is None
    ewma.observe(0.1, 0.0)
    ewma.observe(1.0, 1.0)
    assert ewma.estimate(1.0) == 1.0  # a slower sample is taken at once
    ewma.observe(0.1, 2.0)
    assert 0.1 < ewma.estimate(2.0) < 1.0  # a faster one is blended in
    assert ewma.estimate(60.0) < 0.01  # unused, it decays: the target gets measured again


def test_lowest_latency_explores_a_new_target_one_request_at_a_time():
    loads = [FakeLoad(estimate=0.1), FakeLoad(estimate=None, in_flight=1)]
    # The new target's first request is out: the measured one is cheaper now.
    assert picks(Algorithm.LOWEST_LATENCY, [1, 1], 1, loads=loads) == [0]


# --- peek: what the next pick will be, without moving anything (explain) -----------------------

_loads = st.lists(
    st.tuples(st.integers(0, 4), st.one_of(st.none(), st.floats(0.001, 5.0))),
    min_size=6,
    max_size=6,
)


@settings(max_examples=300)
@given(
    algorithm=st.sampled_from(list(Algorithm)),
    weights=st.lists(st.integers(1, 10), min_size=1, max_size=6),
    steps=st.lists(
        st.tuples(st.lists(st.integers(0, 5), min_size=1, unique=True), _loads, st.integers(0, 3)),
        min_size=1,
        max_size=30,
    ),
    seed=st.integers(0, 2**32),
)
def test_peek_answers_what_pick_will_answer_and_changes_nothing(algorithm, weights, steps, seed):
    """Any algorithm, any eligible sets and loads: peeking (any number of times) before a
    pick gives that pick's answer, and a sequence of picks is the same with or without
    peeks in between."""
    peeked = make_balancer(algorithm, weights, random.Random(seed))
    plain = make_balancer(algorithm, weights, random.Random(seed))
    for eligible, raw_loads, peeks in steps:
        eligible = sorted(i for i in eligible if i < len(weights)) or [0]
        loads = [FakeLoad(n, estimate) for n, estimate in raw_loads]
        now = float(len(eligible))
        ahead = [peeked.peek(eligible, loads, now) for _ in range(peeks + 1)]
        picked = peeked.pick(eligible, loads, now)
        assert ahead == [picked] * len(ahead)
        assert picked in eligible
        assert plain.pick(eligible, loads, now) == picked
