"""FaultPlan: which fault fires on request n at time t. No I/O, time passed in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.testing.fake import Fault, FaultPlan, RequestInfo

CHAT = RequestInfo(path="/v1/chat/completions", model="gpt-4o-mini")
CHAT_STREAM = RequestInfo(path="/v1/chat/completions", model="gpt-4o-mini", stream=True)
MESSAGES = RequestInfo(path="/v1/messages", model="claude-3-5-sonnet-20241022")


def statuses(plan: FaultPlan, request: RequestInfo, times: list[float]) -> list[int | None]:
    """What status each request at each time gets (None: no response fault)."""
    out = []
    for now in times:
        response = plan.decide(request, now=now).response
        out.append(response.status if response is not None else None)
    return out


def test_no_faults_no_decision() -> None:
    plan = FaultPlan.of([], now=0)
    decision = plan.decide(CHAT, now=1)
    assert decision.response is None and decision.delay == 0 and decision.fired == ()


def test_times_then_healthy() -> None:
    plan = FaultPlan.of([Fault.error(503, times=2)], now=0)
    assert statuses(plan, CHAT, [0, 0, 0, 0]) == [503, 503, None, None]
    [stats] = plan.statistics()
    assert (stats.matched, stats.fired) == (4, 2)


def test_skip_lets_the_first_requests_through() -> None:
    plan = FaultPlan.of([Fault.error(500, skip=2, times=1)], now=0)
    assert statuses(plan, CHAT, [0] * 5) == [None, None, 500, None, None]


def test_faults_in_the_same_slot_take_turns_in_order() -> None:
    plan = FaultPlan.of([Fault.error(503, times=1), Fault.error(500, times=1)], now=0)
    assert statuses(plan, CHAT, [0, 0, 0]) == [503, 500, None]
    # The second fault was not even counted while the first one answered.
    assert [s.matched for s in plan.statistics()] == [3, 2]


def test_window_is_measured_from_when_the_fault_was_set() -> None:
    plan = FaultPlan.of([Fault.error(503, window=(1, 3))], now=100)
    assert statuses(plan, CHAT, [100.5, 101, 102.9, 103, 200]) == [None, 503, 503, None, None]


def test_flapping_starts_down_and_repeats() -> None:
    plan = FaultPlan.of([Fault.flap(down=2, up=3)], now=10)
    times = [10, 11.9, 12, 14.9, 15, 16.9, 17, 20]
    assert statuses(plan, CHAT, times) == [503, 503, None, None, 503, 503, None, 503]


def test_flapping_another_fault() -> None:
    plan = FaultPlan.of([Fault.flap(down=1, up=1, fault=Fault.hang(path="/v1/messages"))], now=0)
    assert plan.decide(MESSAGES, now=0.5).response == plan.faults[0]
    assert plan.decide(MESSAGES, now=1.5).response is None
    assert plan.decide(CHAT, now=0.5).response is None


def test_added_faults_start_their_clock_when_added() -> None:
    plan = FaultPlan.of([], now=0)
    plan.add(Fault.error(503, window=(0, 1)), now=50)
    assert statuses(plan, CHAT, [49, 50.5, 51]) == [None, 503, None]


def test_targeting_by_path_model_and_stream() -> None:
    plan = FaultPlan.of(
        [
            Fault.error(401, path="/v1/messages"),
            Fault.error(404, model="gpt-4"),
            Fault.error(409, stream=True),
        ],
        now=0,
    )
    assert statuses(plan, MESSAGES, [0]) == [401]
    assert statuses(plan, RequestInfo(path="/v1/chat/completions", model="gpt-4"), [0]) == [404]
    assert statuses(plan, CHAT_STREAM, [0]) == [409]
    assert statuses(plan, CHAT, [0]) == [None]


def test_stream_faults_ignore_and_do_not_count_other_requests() -> None:
    plan = FaultPlan.of([Fault.cut_stream(after_chunks=3, times=1)], now=0)
    assert plan.decide(CHAT_STREAM, now=0).response is None  # not a response fault
    assert plan.decide_stream(CHAT, now=0).end is None  # not a stream
    shape = plan.decide_stream(CHAT_STREAM, now=0)
    assert shape.end_at == 3 and shape.fired == plan.faults
    assert plan.decide_stream(CHAT_STREAM, now=0).end is None
    [stats] = plan.statistics()
    assert (stats.matched, stats.fired) == (2, 1)


def test_latency_combines_with_a_response_and_stream_faults() -> None:
    plan = FaultPlan.of(
        [Fault.latency(0.5), Fault.error(503, times=1), Fault.stall_stream(2, after_chunks=1)],
        now=0,
    )
    first = plan.decide(CHAT_STREAM, now=0)
    assert (first.delay, first.response.status) == (0.5, 503)
    second = plan.decide(CHAT_STREAM, now=0)
    assert (second.delay, second.response, second.fired) == (0.5, None, plan.faults[:1])
    assert plan.decide_stream(CHAT_STREAM, now=0).stall_at == 1


def test_response_and_stream_faults_are_separate() -> None:
    plan = FaultPlan.of([Fault.hang(times=1), Fault.no_terminator(times=1)], now=0)
    assert plan.decide(CHAT_STREAM, now=0).response == Fault.hang(times=1)
    assert plan.decide(CHAT_STREAM, now=0).response is None
    assert [s.matched for s in plan.statistics()] == [2, 0]
    assert plan.decide_stream(CHAT_STREAM, now=0).end == Fault.no_terminator(times=1)


def test_stream_slots_fill_independently() -> None:
    plan = FaultPlan.of(
        [
            Fault.slow_first_token(1.5),
            Fault.malformed_event(after_chunks=2),
            Fault.error_event(after_chunks=5),
            Fault.cut_stream(after_chunks=1),  # same slot as error_event: never reached
        ],
        now=0,
    )
    assert plan.decide(CHAT_STREAM, now=0) == plan.decide(CHAT, now=0)  # nothing to do
    shape = plan.decide_stream(CHAT_STREAM, now=0)
    assert shape.first_token_delay == 1.5
    assert shape.malformed_at == 2
    assert shape.end_at == 5 and shape.end == Fault.error_event(after_chunks=5)
    assert shape.fired == plan.faults[:3]
    assert plan.statistics()[3].matched == 0


def test_no_terminator_ends_at_the_terminator() -> None:
    plan = FaultPlan.of([Fault.no_terminator()], now=0)
    shape = plan.decide_stream(CHAT_STREAM, now=0)
    assert shape.end == Fault.no_terminator() and shape.end_at is None


def test_stream_faults_default_to_two_chunks() -> None:
    plan = FaultPlan.of([Fault.cut_stream(after_chunks=None)], now=0)
    assert plan.decide_stream(CHAT_STREAM, now=0).end_at == 2


def test_probability_is_seeded() -> None:
    def run(seed: int) -> list[int | None]:
        plan = FaultPlan.of([Fault.error(503, probability=0.3)], now=0, seed=seed)
        return statuses(plan, CHAT, [0] * 1000)

    first = run(1)
    assert first == run(1)
    assert first != run(2)
    assert 230 < first.count(503) < 370


def test_jitter_stays_within_bounds() -> None:
    plan = FaultPlan.of([Fault.latency(1.0, jitter=0.25)], now=0, seed=3)
    delays = [plan.decide(CHAT, now=0).delay for _ in range(500)]
    assert min(delays) >= 0.75 and max(delays) <= 1.25
    assert max(delays) - min(delays) > 0.4
    assert FaultPlan.of([Fault.latency(0.1, jitter=5)], now=0).decide(CHAT, now=0).delay >= 0


def test_replace_resets_counters() -> None:
    plan = FaultPlan.of([Fault.error(503, times=1)], now=0)
    assert statuses(plan, CHAT, [0, 0]) == [503, None]
    plan.replace(plan.faults, now=0)
    assert statuses(plan, CHAT, [0, 0]) == [503, None]


selections = st.fixed_dictionaries(
    {},
    optional={
        "skip": st.integers(0, 3),
        "times": st.integers(1, 4),
        "probability": st.floats(0.05, 1.0),
        "model": st.sampled_from(["gpt-4o-mini", "gpt-4"]),
        "stream": st.booleans(),
    },
)


@settings(max_examples=200, deadline=None)
@given(
    faults=st.lists(selections.map(lambda kw: Fault.error(503, **kw)), max_size=4),
    requests=st.lists(
        st.builds(
            RequestInfo,
            path=st.just("/v1/chat/completions"),
            model=st.sampled_from(["gpt-4o-mini", "gpt-4"]),
            stream=st.booleans(),
        ),
        max_size=30,
    ),
    seed=st.integers(0, 10),
)
def test_invariants(faults: list[Fault], requests: list[RequestInfo], seed: int) -> None:
    plan = FaultPlan.of(faults, now=0, seed=seed)
    answered = 0
    for i, request in enumerate(requests):
        decision = plan.decide(request, now=i)
        answered += decision.response is not None
        assert len(decision.fired) == (decision.response is not None)
    stats = plan.statistics()
    assert sum(s.fired for s in stats) == answered
    for s in stats:
        assert s.fired <= max(0, s.matched - s.fault.skip)
        assert s.fault.times is None or s.fired <= s.fault.times
        assert s.matched <= len(requests)
