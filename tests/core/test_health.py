"""The circuit breaker, driven by hand: ``now`` is just a number."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.core.health import Breaker, BreakerPolicy, State, Ticket


def breaker(
    threshold: int = 3, interval: float = 60.0, passive: bool = True, cap: float = 300.0
) -> Breaker:
    return Breaker(
        BreakerPolicy(passive=passive, threshold=threshold, interval=interval, cooldown_cap=cap)
    )


def fail(b: Breaker, now: float, n: int = 1, retry_after: float | None = None) -> None:
    for _ in range(n):
        b.failed(now, b.admit(now), "HTTP 503", retry_after)


def test_threshold_consecutive_failures_eject_for_interval():
    b = breaker(threshold=3, interval=60)
    fail(b, 0.0, 2)
    assert b.state is State.HEALTHY and b.admits(0.0)
    fail(b, 1.0)
    assert b.state is State.EJECTED
    assert b.ejected_until == 61.0
    assert not b.admits(60.9)
    assert b.admits(61.0)


def test_a_success_resets_the_count():
    b = breaker(threshold=3)
    fail(b, 0.0, 2)
    b.succeeded(1.0, b.admit(1.0))
    fail(b, 2.0, 2)
    assert b.state is State.HEALTHY


def test_the_last_threshold_failures_must_fit_in_interval():
    b = breaker(threshold=3, interval=10)
    fail(b, 0.0, 2)
    fail(b, 11.0)  # 0, 0, 11: spread over more than 10 s
    assert b.state is State.HEALTHY and b.consecutive_failures == 3
    fail(b, 12.0)  # 0, 11, 12: still too spread
    assert b.state is State.HEALTHY
    fail(b, 13.0)  # 11, 12, 13
    assert b.state is State.EJECTED


def test_the_window_slides():
    b = breaker(threshold=3, interval=60)
    fail(b, 59.0)
    fail(b, 61.0)
    fail(b, 62.0)
    assert b.state is State.EJECTED


def test_half_open_admits_exactly_one_trial():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0)
    assert b.admit(10.0) is Ticket.TRIAL
    assert b.state is State.HALF_OPEN
    assert not b.admits(10.0) and not b.admits(500.0)
    b.succeeded(10.5, Ticket.TRIAL)
    assert b.state is State.HEALTHY and b.admits(10.5)


def test_failed_trial_doubles_the_cooldown_up_to_the_cap():
    b = breaker(threshold=1, interval=10, cap=35)
    fail(b, 0.0)
    expected = [20.0, 35.0, 35.0]
    now = 10.0
    for cooldown in expected:
        ticket = b.admit(now)
        assert ticket is Ticket.TRIAL
        b.failed(now, ticket, "timeout")
        assert b.ejected_until == now + cooldown
        now += cooldown


def test_retry_after_lengthens_the_cooldown():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0, retry_after=45.0)
    assert b.ejected_until == 45.0


def test_abandoned_trial_frees_the_slot():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0)
    ticket = b.admit(10.0)
    b.abandoned(ticket)
    assert b.state is State.HALF_OPEN and b.admits(10.0)


def test_stale_outcomes_do_not_close_a_trial():
    b = breaker(threshold=1, interval=10)
    early = b.admit(0.0)  # admitted while healthy
    fail(b, 0.0)  # another request ejects the target
    trial = b.admit(10.0)
    b.succeeded(10.1, early)  # the early request finishes late
    assert b.state is State.HALF_OPEN and b.trial_in_flight
    b.failed(10.2, early, "late")  # nor does a stale failure re-eject
    assert b.state is State.HALF_OPEN
    b.succeeded(10.3, trial)
    assert b.state is State.HEALTHY


def test_backoff_level_resets_after_a_healthy_spell():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0)
    b.failed(10.0, b.admit(10.0), "x")  # level 1: 20 s
    b.succeeded(30.0, b.admit(30.0))
    fail(b, 31.0)  # healthy for 1 s only: still level 1
    assert b.ejected_until == 31.0 + 20.0
    b.succeeded(51.0, b.admit(51.0))
    fail(b, 100.0)  # healthy for 49 s >= last cool-down: back to level 0
    assert b.ejected_until == 110.0


def test_passive_off_never_ejects():
    b = breaker(threshold=1, passive=False)
    fail(b, 0.0, 10)
    assert b.state is State.HEALTHY and b.admits(0.0)
    assert b.statistics(0.0).last_error == "HTTP 503"


events = st.lists(
    st.tuples(
        st.sampled_from(["admit", "admit", "ok", "fail", "abandon", "probe_ok", "probe_fail"]),
        st.floats(0, 30),
        st.integers(0, 20),
    ),
    max_size=80,
)


@settings(max_examples=400)
@given(events, st.integers(1, 5), st.floats(1, 20))
def test_invariants_hold_under_any_traffic(events, threshold, interval):
    """Many requests in flight, settled in any order, probes mixed in:
    never two trials, never admitted while cooling down, the trial flag is exact."""
    b = breaker(threshold=threshold, interval=interval)
    now = 0.0
    in_flight: list[Ticket] = []
    for kind, step, pick in events:
        now += step
        if kind == "admit":
            if b.admits(now):
                in_flight.append(b.admit(now))
            else:
                assert (b.state is State.EJECTED and now < b.ejected_until) or b.trial_in_flight
        elif kind.startswith("probe"):
            b.probed(now, ok=kind == "probe_ok", error="x")
        elif in_flight:
            ticket = in_flight.pop(pick % len(in_flight))
            if kind == "ok":
                b.succeeded(now, ticket)
            elif kind == "fail":
                b.failed(now, ticket, "x")
            else:
                b.abandoned(ticket)
        trials = [t for t in in_flight if t is Ticket.TRIAL]
        assert len(trials) <= 1
        assert b.trial_in_flight == bool(trials)
        if b.state is State.EJECTED and now < b.ejected_until:
            assert not b.admits(now)


def test_active_probes_eject_and_readmit_after_the_cooldown():
    b = breaker(threshold=2, interval=10, passive=False)
    b.probed(0.0, ok=False, error="HTTP 503")
    b.probed(10.0, ok=False, error="HTTP 503")
    assert b.state is State.EJECTED  # probes eject even with passive off
    assert b.ejected_until == 20.0
    assert b.statistics(10.0).last_error == "probe: HTTP 503"
    b.probed(15.0, ok=True)  # a probe never shortens the cool-down
    assert b.state is State.EJECTED and not b.admits(15.0)
    b.probed(20.0, ok=True)  # ...but serves as the trial once it is over
    assert b.state is State.HEALTHY and b.admits(20.0)


def test_a_failed_probe_after_the_cooldown_is_a_failed_trial():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0, retry_after=30.0)
    b.probed(20.0, ok=True)
    assert b.state is State.EJECTED  # Retry-After is honoured
    b.probed(30.0, ok=False, error="HTTP 503")
    assert b.state is State.EJECTED and b.ejected_until == 30.0 + 20.0  # doubled


def test_a_successful_probe_does_not_hide_failing_traffic():
    b = breaker(threshold=3)
    fail(b, 0.0, 2)
    b.probed(1.0, ok=True)
    fail(b, 2.0)
    assert b.state is State.EJECTED


def test_a_probe_does_not_preempt_a_trial_in_flight():
    b = breaker(threshold=1, interval=10)
    fail(b, 0.0)
    trial = b.admit(10.0)
    b.probed(10.1, ok=True)
    assert b.state is State.HALF_OPEN and b.trial_in_flight
    b.failed(10.2, trial, "x")
    assert b.state is State.EJECTED
