"""The health state machine, driven by hand: ``now`` is just a number (virtual time)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.core.health import (
    MAX_RETRY_AFTER_S,
    RATE_LIMIT_BACKOFF_MAX_S,
    Check,
    Health,
    HealthPolicy,
    State,
    Ticket,
)

GUIDE = HealthPolicy(passive=True, threshold=3, interval=60.0)  # the guide's settings


def health(**policy: object) -> Health:
    return Health(HealthPolicy(**policy)) if policy else Health(GUIDE)


def fail(h: Health, now: float, n: int = 1, error: str = "503") -> None:
    for _ in range(n):
        h.failed(now, h.admit(now), error)


def succeed(h: Health, now: float) -> None:
    h.succeeded(now, h.admit(now))


def recover(h: Health, now: float, result: Check = Check.OK) -> None:
    """What the actor does when a recovery check is due."""
    assert h.check_due(now)
    h.start_check(now)
    assert h.state is State.CHECKING
    h.checked(now, result, "" if result is Check.OK else "HTTP 503")


# --- 1. slow failures eject --------------------------------------------------------------


def test_threshold_failures_in_a_row_eject_however_long_each_took():
    h = health()
    fail(h, 0.0)
    fail(h, 30.0)  # each took a whole first-byte budget
    assert h.state is State.HEALTHY and h.admits(30.0)
    fail(h, 3600.0)
    assert h.state is State.EJECTED and not h.admits(3600.0)
    assert h.reason == "3 failures in a row (503, 503, 503)"


def test_a_success_resets_the_count():
    h = health()
    fail(h, 0.0, 2)
    succeed(h, 1.0)
    fail(h, 2.0, 2)
    assert h.state is State.HEALTHY and h.consecutive_failures == 2


def test_passive_false_counts_but_never_ejects():
    h = health(passive=False, threshold=1)
    fail(h, 0.0, 10)
    assert h.state is State.HEALTHY and h.consecutive_failures == 10


# --- 4. recovery: checks, probation, out-period ---------------------------------------------


def test_out_for_ejection_time_then_checked_and_restored_on_probation():
    h = health()
    fail(h, 0.0, 3)
    assert h.until == 5.0  # the default ejection_time
    assert not h.check_due(4.99)
    recover(h, 5.0)
    assert h.state is State.HEALTHY and h.probation and h.admits(5.0)
    succeed(h, 6.0)
    assert not h.probation


def test_a_failed_check_costs_nothing_and_is_repeated_without_doubling():
    h = health()
    fail(h, 0.0, 3)
    for k in range(1, 10):
        recover(h, 5.0 * k, Check.FAILED)
        assert h.state is State.EJECTED and h.until == 5.0 * (k + 1)
    assert h.ejections == 1 and h.level == 0


def test_on_probation_a_target_takes_one_request_at_a_time():
    h = health()
    fail(h, 0.0, 3)
    recover(h, 5.0)
    ticket = h.admit(5.0)
    assert ticket is Ticket.TRIAL and not h.admits(5.0)  # the others go elsewhere
    h.released(ticket)  # the client left: nothing learnt, the slot is free again
    assert h.admits(5.0) and h.probation
    h.succeeded(6.0, h.admit(6.0))
    assert h.admits(6.0) and not h.probation
    assert h.admit(6.0) is Ticket.NORMAL and h.admits(6.0)


def test_one_failure_on_probation_ejects_again_for_twice_as_long():
    h = health()
    fail(h, 0.0, 3)
    recover(h, 5.0)
    fail(h, 6.0)  # answers checks, fails real requests
    assert h.state is State.EJECTED and h.level == 1 and h.until == 16.0
    recover(h, 16.0)
    fail(h, 17.0)
    assert h.level == 2 and h.until == 17.0 + 20.0


def test_the_out_period_never_exceeds_interval():
    h = health(threshold=1, interval=12.0, ejection_time=5.0)
    fail(h, 0.0)
    now = 0.0
    periods = []
    for _ in range(6):
        now = h.until
        recover(h, now)
        fail(h, now)
        periods.append(h.until - now)
    assert periods == [10.0, 12.0, 12.0, 12.0, 12.0, 12.0]


def test_the_level_starts_over_after_a_long_enough_healthy_run():
    h = health(threshold=1)
    fail(h, 0.0)
    recover(h, 5.0)
    fail(h, 6.0)
    assert h.level == 1
    recover(h, 16.0)
    succeed(h, 17.0)
    fail(h, 16.0 + 10.0)  # restored for as long as its last out-period
    assert h.level == 0 and h.until == 31.0


def test_flapping_costs_at_most_threshold_failures_per_outage_and_serves_while_up():
    """10 s down / 10 s up, a request every 0.5 s, checks as the actor makes them."""
    h = health()
    down = lambda t: int(t // 10) % 2 == 0  # noqa: E731
    failed_calls: dict[int, int] = {}
    served_up = 0
    up_calls = 0
    t = 0.0
    while t < 200.0:
        if h.check_due(t):
            h.start_check(t)
            h.checked(t, Check.FAILED if down(t) else Check.OK, "HTTP 503")
        if h.admits(t):
            ticket = h.admit(t)
            if down(t):
                failed_calls[int(t // 20)] = failed_calls.get(int(t // 20), 0) + 1
                h.failed(t, ticket, "503")
            else:
                h.succeeded(t, ticket)
                served_up += 1
        if not down(t):
            up_calls += 1
        t += 0.5
    assert failed_calls and max(failed_calls.values()) <= GUIDE.threshold + 1
    assert served_up >= 0.7 * up_calls  # back within one ejection time of each recovery


# --- 3. rate limits are not sickness -------------------------------------------------------


def test_retry_after_parks_for_exactly_that_long_without_counting_a_failure():
    h = health()
    fail(h, 0.0, 2)
    h.rate_limited(1.0, h.admit(1.0), 10.0)
    assert h.state is State.PARKED and h.consecutive_failures == 2 and h.ejections == 0
    assert not h.admits(10.999)
    assert h.admits(11.0)
    assert h.admit(11.0) is Ticket.NORMAL and h.state is State.HEALTHY
    h.rate_limited(11.0, Ticket.NORMAL, 10.0)
    assert h.until == 21.0  # the same again: nothing doubles


def test_429_without_retry_after_backs_off_briefly_and_a_success_resets_it():
    h = health()
    now, waits = 0.0, []
    for _ in range(8):
        h.rate_limited(now, h.admit(now), None)
        waits.append(h.until - now)
        now = h.until
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert RATE_LIMIT_BACKOFF_MAX_S == 30.0
    succeed(h, now)
    h.rate_limited(now, h.admit(now), None)
    assert h.until - now == 1.0


def test_an_absurd_retry_after_is_capped():
    h = health()
    h.rate_limited(0.0, h.admit(0.0), 1e9)
    assert h.until == MAX_RETRY_AFTER_S


def test_a_stale_429_does_not_shorten_an_ejection():
    h = health()
    tickets = [h.admit(0.0) for _ in range(4)]
    for ticket in tickets[:3]:
        h.failed(0.0, ticket, "503")
    h.rate_limited(1.0, tickets[3], 0.5)  # admitted before the ejection
    assert h.state is State.EJECTED and h.until == 5.0


# --- 5. the last resort ------------------------------------------------------------------


def test_a_last_resort_success_restores_and_a_failure_changes_nothing():
    h = health()
    fail(h, 0.0, 3)
    h.failed(1.0, Ticket.PANIC, "timeout")
    assert h.state is State.EJECTED and h.until == 5.0 and h.ejections == 1
    h.succeeded(2.0, Ticket.PANIC)
    assert h.state is State.HEALTHY and not h.probation


def test_out_until_ranks_the_soonest_back_first():
    soon, late = health(), health(ejection_time=30.0)
    fail(soon, 0.0, 3)
    fail(late, 0.0, 3)
    assert soon.out_until(1.0) < late.out_until(1.0)
    assert health().out_until(7.0) == 7.0


def test_a_stale_outcome_cannot_eject_twice():
    h = health()
    tickets = [h.admit(0.0) for _ in range(6)]
    for ticket in tickets:
        h.failed(0.0, ticket, "timeout")
    assert h.ejections == 1


def test_the_upstreams_cap_can_refuse_an_ejection():
    allowed = [False]
    h = Health(GUIDE, may_eject=lambda: allowed[0])
    fail(h, 0.0, 3)
    assert h.state is State.HEALTHY and "too many targets" in h.reason
    allowed[0] = True
    fail(h, 1.0)
    assert h.state is State.EJECTED


# --- active probes -------------------------------------------------------------------------


def test_threshold_failed_probes_eject_whatever_passive_says():
    h = health(passive=False)
    for t in range(2):
        h.probed(float(t), Check.FAILED, "HTTP 500")
    assert h.state is State.HEALTHY
    h.probed(2.0, Check.FAILED, "HTTP 500")
    assert h.state is State.EJECTED


def test_a_passing_probe_does_not_hide_failing_traffic():
    h = health()
    fail(h, 0.0, 2)
    h.probed(1.0, Check.OK)
    fail(h, 2.0)
    assert h.state is State.EJECTED


def test_a_rate_limited_probe_parks():
    h = health()
    h.probed(0.0, Check.RATE_LIMITED, "HTTP 429", 3.0)
    assert h.state is State.PARKED and h.until == 3.0


def test_a_rate_limited_recovery_check_parks_and_comes_back_without_a_check():
    h = health()
    fail(h, 0.0, 3)
    h.start_check(5.0)
    h.checked(5.0, Check.RATE_LIMITED, "HTTP 429", 2.0)
    assert h.state is State.PARKED and h.admits(7.0)


# --- transitions -----------------------------------------------------------------------------


def test_each_transition_is_taken_once_with_its_reason():
    h = health()
    assert h.take_transition() is None
    fail(h, 0.0, 3)
    transition = h.take_transition()
    assert transition is not None and (transition.old, transition.new) == (
        State.HEALTHY,
        State.EJECTED,
    )
    assert h.take_transition() is None
    recover(h, 5.0)
    assert [t.new for t in h.history] == [State.EJECTED, State.CHECKING, State.HEALTHY]
    stats = h.statistics(5.0)
    assert stats.state is State.HEALTHY and stats.reason == "the recovery check passed"


def test_statistics_show_a_park_that_is_over_as_healthy():
    h = health()
    h.rate_limited(0.0, h.admit(0.0), 1.0)
    assert h.statistics(0.5).state is State.PARKED and h.statistics(0.5).until == 1.0
    assert h.statistics(1.0).state is State.HEALTHY and h.statistics(1.0).until is None


# --- invariants, for any sequence of events ---------------------------------------------------

EVENTS = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0),
        st.sampled_from(
            [
                "ok",
                "fail",
                "429",
                "429ra",
                "panic_ok",
                "panic_fail",
                "check_ok",
                "check_fail",
                "probe_fail",
            ]
        ),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    events=EVENTS,
    threshold=st.integers(1, 5),
    interval=st.floats(1.0, 120.0),
    ejection_time=st.floats(0.5, 30.0),
)
def test_invariants(events, threshold, interval, ejection_time):
    policy = HealthPolicy(threshold=threshold, interval=interval, ejection_time=ejection_time)
    h = Health(policy)
    now = 0.0
    for step, kind in events:
        now += step
        if h.check_due(now) and kind.startswith("check"):
            h.start_check(now)
            h.checked(now, Check.OK if kind == "check_ok" else Check.FAILED, "x")
        elif kind.startswith("panic"):
            if kind == "panic_ok":
                h.succeeded(now, Ticket.PANIC)
            else:
                h.failed(now, Ticket.PANIC, "x")
        elif kind == "probe_fail":
            h.probed(now, Check.FAILED, "x")
        elif h.admits(now):
            ticket = h.admit(now)
            if kind == "ok":
                h.succeeded(now, ticket)
            elif kind == "fail":
                h.failed(now, ticket, "x")
            else:
                h.rate_limited(now, ticket, 3.0 if kind == "429ra" else None)
        # Only a target in rotation admits, and an out target says until when.
        if h.admits(now):
            assert h.state is State.HEALTHY or (h.state is State.PARKED and now >= h.until)
        if h.state is State.EJECTED:
            assert h.until > h.since
            assert h.last_out <= max(interval, ejection_time) + 1e-9
        if h.state is State.PARKED:
            assert h.until - h.since <= max(MAX_RETRY_AFTER_S, RATE_LIMIT_BACKOFF_MAX_S)
        if h.state is State.HEALTHY:
            assert h.consecutive_failures < threshold  # reaching it ejects (no cap here)
        assert h.statistics(now).state in State


# --- shared health ---------------------------------------------------------------------------


def test_an_ejection_from_another_instance_is_taken_as_it_is_and_not_announced_again():
    h = health()
    fail(h, 0.0, 2)
    h.ejected_elsewhere(1.0, 31.0, "3 failures in a row (503, 503, 503)")
    assert h.state is State.EJECTED and h.until == 31.0 and h.level == 0
    transition = h.take_transition()
    assert transition is not None and not transition.local
    assert transition.reason == "ejected by another instance: 3 failures in a row (503, 503, 503)"
    assert h.check_due(31.0)  # then its own recovery checks decide


def test_an_ejection_from_elsewhere_respects_the_cap_and_the_state_here():
    h = Health(GUIDE, may_eject=lambda: False)
    h.ejected_elsewhere(0.0, 30.0, "x")
    assert h.state is State.HEALTHY  # the cap: never every target out
    parked = health()
    parked.rate_limited(0.0, parked.admit(0.0), 10.0)
    parked.ejected_elsewhere(1.0, 30.0, "x")
    assert parked.state is State.PARKED  # only a target in rotation takes it
    late = health()
    late.ejected_elsewhere(5.0, 4.0, "x")  # already over
    assert late.state is State.HEALTHY
