"""Per-key limits, sans-IO: the shared arithmetic, leases across processes, reserve and settle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.config.models import (
    ApiKey,
    Budget,
    BudgetPeriod,
    Gateway,
    KeyDefaults,
    KeyLimits,
    Price,
)
from trio_gateway.core.estimate import Estimate
from trio_gateway.core.limits import (
    BUCKET,
    COUNTER,
    Allowance,
    Allowances,
    KeyPolicy,
    KeyState,
    LimitOp,
    LimitRow,
    Shortfall,
    Ticket,
    apply_op,
    cost_of,
    duration,
    model_not_allowed,
    period_of,
)
from trio_gateway.errors import BudgetExhausted, KeyLimitExceeded
from trio_gateway.providers.usage import Usage

# 2026-05-31T23:59:00Z: a minute before a day and a month end.
MAY_31 = 1780271940.0

# --- the shared arithmetic -------------------------------------------------------------------


def test_a_fresh_bucket_grants_its_capacity_in_whole_units_then_refills_at_its_rate():
    row, grant = apply_op(LimitOp("s", BUCKET, 10, 10 / 60, take=25), None, now=100.0)
    assert (grant.granted, grant.level) == (10, 0)
    row, grant = apply_op(LimitOp("s", BUCKET, 10, 10 / 60, take=5), row, now=105.9)
    assert grant.granted == 0  # 0.98 of a request: not a whole one
    row, grant = apply_op(LimitOp("s", BUCKET, 10, 10 / 60, take=5), row, now=106.0)
    assert grant.granted == 1
    row, grant = apply_op(LimitOp("s", BUCKET, 10, 10 / 60, take=50), row, now=10_000.0)
    assert grant.granted == 10  # never more than a full bucket, however long it waited


def test_bucket_returns_stop_at_capacity_and_charges_make_debt():
    row, _ = apply_op(LimitOp("s", BUCKET, 100, 1.0, take=30), None, now=0.0)
    row, grant = apply_op(LimitOp("s", BUCKET, 100, 1.0, put=500), row, now=0.0)
    assert grant.level == 100
    row, grant = apply_op(LimitOp("s", BUCKET, 100, 1.0, put=-150, take=1), row, now=0.0)
    assert (grant.granted, grant.level) == (0, -50)
    row, grant = apply_op(LimitOp("s", BUCKET, 100, 1.0, take=1), row, now=51.0)
    assert grant.granted == 1  # the debt is paid by the refill first


def test_a_counter_grants_up_to_its_limit_and_counts_returns_and_charges():
    row, grant = apply_op(LimitOp("b", COUNTER, 1000, take=600), None, now=0.0)
    assert (grant.granted, grant.level, row.value) == (600, 400, 600)
    row, grant = apply_op(LimitOp("b", COUNTER, 1000, take=600), row, now=1e9)
    assert (grant.granted, grant.level) == (400, 0)  # no refill, ever
    row, grant = apply_op(LimitOp("b", COUNTER, 1000, put=-50), row, now=0.0)
    assert grant.level == -50  # used beyond the budget by settling
    row, grant = apply_op(LimitOp("b", COUNTER, 1000, put=5000), row, now=0.0)
    assert row.value == 0  # never below nothing used
    _, grant = apply_op(LimitOp("c", COUNTER, 2.5, take=1.75, whole=False), None, now=0.0)
    assert grant.granted == 1.75


ops = st.builds(
    lambda put, take, dt: (put, take, dt),
    st.floats(-50, 50),
    st.floats(0, 50),
    st.floats(0, 30),
)


@given(
    capacity=st.integers(1, 100), per_minute=st.integers(1, 600), steps=st.lists(ops, max_size=40)
)
def test_a_bucket_never_grants_more_than_its_capacity_plus_its_refill(capacity, per_minute, steps):
    rate = per_minute / 60
    row: LimitRow | None = None
    now = granted = returned = 0.0
    for put, take, dt in steps:
        now += dt
        row, grant = apply_op(LimitOp("s", BUCKET, capacity, rate, put, take), row, now)
        assert grant.granted == int(grant.granted) and 0 <= grant.granted <= take + 1e-9
        assert grant.level <= capacity + 1e-9
        granted += grant.granted
        returned += max(0.0, put)
        # What went out is within a full bucket, its refill and what came back.
        assert granted <= capacity + rate * now + returned + 1e-6


@given(limit=st.floats(1, 1e6), steps=st.lists(ops, max_size=40))
def test_a_counter_never_grants_past_its_limit(limit, steps):
    row = None
    for put, take, _ in steps:
        row, grant = apply_op(LimitOp("b", COUNTER, limit, 0.0, put, take, whole=False), row, 0.0)
        assert 0 <= grant.granted <= take
        if grant.granted:
            assert row.value <= limit + 1e-6


# --- leases across processes -----------------------------------------------------------------


class Store:
    """One shared row, exchanged with in one step (as each store's transaction does)."""

    def __init__(self) -> None:
        self.rows: dict[str, LimitRow] = {}

    def exchange(self, allowance: Allowance, now: float) -> None:
        op = allowance.ask(now)
        if op is not None:
            self.rows[op.scope], grant = apply_op(op, self.rows.get(op.scope), now)
            allowance.granted(grant, now)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("request"), st.integers(0, 3)),
        st.tuples(st.just("exchange"), st.integers(0, 3)),
        st.tuples(st.just("wait"), st.floats(0, 20)),
    ),
    max_size=300,
)


@settings(max_examples=200)
@given(per_minute=st.integers(1, 120), schedule=steps)
def test_requests_never_pass_a_limit_however_processes_lease_it(per_minute, schedule):
    """Four processes lease one bucket: in any schedule of requests, exchanges and time,
    the requests admitted in total stay within the bucket (capacity + rate * elapsed)."""
    store = Store()
    processes = [Allowance.bucket("rpm:k", per_minute) for _ in range(4)]
    now = admitted = 0.0
    for kind, arg in schedule:
        if kind == "wait":
            now += arg
        elif kind == "exchange":
            store.exchange(processes[arg], now)
        else:
            process = processes[arg]
            if process.has(1, now):
                process.spend(1, now)
                process.open -= 1
                admitted += 1
            elif process.may_get(1, now):
                process.wanted += 1
                store.exchange(process, now)
                process.wanted -= 1
                if process.has(1, now):
                    process.spend(1, now)
                    process.open -= 1
                    admitted += 1
        assert admitted <= per_minute + per_minute / 60 * now + 1e-6


@settings(max_examples=200)
@given(
    limit=st.integers(1_000, 100_000),
    requests=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 3_000), st.floats(0, 1), st.booleans()),
        max_size=80,
    ),
)
def test_a_budget_is_charged_exactly_what_was_used(limit, requests):
    """Three processes spend one token budget: reserve an estimate, settle to the usage.

    Conservation: once every lease is given back the counter holds exactly what the
    requests used. No overshoot: with usage within the estimates, never more than the
    budget is used.
    """
    store = Store()
    registries = [Allowances() for _ in range(3)]
    policy = KeyPolicy("k", "g", budget=Budget(period=BudgetPeriod.LIFETIME, tokens=limit))
    keys = [KeyState.of(policy, registry) for registry in registries]
    used = 0
    now = 0.0
    for process, estimate, share, exchange_first in requests:
        key = keys[process]
        if exchange_first:
            for allowance in registries[process]:
                store.exchange(allowance, now)
        found = _admit(key, Estimate(estimate // 2, estimate - estimate // 2), now, store)
        if isinstance(found, Ticket):
            actual = int(estimate * share)
            key.settle(found, Usage(actual // 2, actual - actual // 2), None)
            used += actual
        now += 0.1
    now += 10  # every key idle: leases go back
    for registry in registries:
        for allowance in registry:
            store.exchange(allowance, now)
            assert allowance.local == 0 and allowance.put == 0
    row = store.rows.get(f"bt:k:{period_of(BudgetPeriod.LIFETIME, 0)[0]}")
    assert (row.value if row else 0) == pytest.approx(used)
    assert used <= limit


def _admit(key: KeyState, estimate: Estimate, now: float, store: Store) -> Ticket | None:
    try:
        found = key.admit(estimate, None, now, MAY_31)
        if isinstance(found, Shortfall):
            for allowance, n in found.waiting:
                allowance.wanted += n
                store.exchange(allowance, now)
                allowance.wanted -= n
            found = key.admit(estimate, None, now, MAY_31)
    except KeyLimitExceeded:
        return None
    return found if isinstance(found, Ticket) else None


def test_a_lease_adapts_to_the_pace_of_its_key():
    store = Store()
    small = Allowance.bucket("rpm:small", 10)
    busy = Allowance.bucket("rpm:busy", 60_000)
    now = 0.0
    for allowance in (small, busy):
        allowance.used_at = 0.0
        store.exchange(allowance, now)
    assert small.local == 1  # a tenth of a 10-per-minute bucket: one request at a time
    exchanges = 0
    for i in range(5_000):  # 500 requests a second for 10 s
        now = i / 500
        if not busy.has(1, now):
            busy.wanted += 1
        if busy.short() or busy.wanted:
            store.exchange(busy, now)
            exchanges += 1
        busy.wanted = 0
        assert busy.has(1, now)
        busy.spend(1, now)
        busy.open -= 1
    assert 400 <= busy.target <= 600  # about a second of its traffic
    assert exchanges < 5_000 / 50  # amortized: one exchange per hundreds of requests


def test_an_idle_key_gives_its_lease_back():
    store = Store()
    allowance = Allowance.bucket("rpm:k", 600)
    allowance.used_at = 0.0
    allowance.wanted = 30
    store.exchange(allowance, 0.0)
    allowance.wanted = 0
    assert allowance.local >= 30
    store.exchange(allowance, 1.0)
    assert allowance.local > 0  # still in use
    store.exchange(allowance, 2.5)
    assert allowance.local == 0 and store.rows["rpm:k"].value == pytest.approx(0)
    assert not allowance.busy(2.5)


def test_alone_a_process_enforces_the_full_limit_on_its_own_traffic():
    allowance = Allowance.bucket("rpm:k", 10)
    allowance.go_alone(0.0)
    assert sum(allowance.has(1, 0.0) and (allowance.spend(1, 0.0) or True) for _ in range(30)) == 10
    assert not allowance.may_get(1, 0.0)  # never waits for a store that is away
    assert allowance.wait_s(1, 0.0) == pytest.approx(6.0)
    assert allowance.has(1, 6.0)


def test_a_budget_spent_alone_is_charged_when_the_store_is_back():
    store = Store()
    budget = Allowance.counter("bt:k:lifetime", 1000)
    budget.used_at, budget.wanted = 0.0, 100
    store.exchange(budget, 0.0)
    budget.wanted = 0
    leased = budget.local
    assert leased >= 100 and store.rows["bt:k:lifetime"].value == leased
    budget.go_alone(1.0)
    assert budget.local == 1000  # its lease and what the store had left
    budget.spend(250, 1.0)
    budget.adjust(250, 240)
    budget.back()
    store.exchange(budget, 5.0)
    assert store.rows["bt:k:lifetime"].value == 240  # what was used, neither more nor less


# --- a key ------------------------------------------------------------------------------------


def key_state(**limits) -> KeyState:
    budget = limits.pop("budget", None)
    policy = KeyPolicy(
        "k",
        "g",
        budget=budget,
        prices={"cheap": Price(input=1, output=2), "dear": Price(input=10, output=30, cached=1)},
        top_price=Price(input=10, output=30),
        **limits,
    )
    return KeyState.of(policy, Allowances())


def lease_everything(key: KeyState) -> None:
    store = Store()
    for allowance in key.allowances():
        allowance.used_at = 0.0
        allowance.wanted = allowance.capacity
        store.exchange(allowance, 0.0)
        allowance.wanted = 0


def test_a_request_takes_from_every_limit_or_from_none():
    key = key_state(requests_per_minute=5, tokens_per_minute=1000)
    lease_everything(key)
    ticket = key.admit(Estimate(100, 500), None, 0.0, MAY_31)
    assert isinstance(ticket, Ticket)
    assert (key.requests.local, key.tokens.local) == (4, 400)
    with pytest.raises(KeyLimitExceeded) as info:
        key.admit(Estimate(100, 500), None, 0.0, MAY_31)
    assert info.value.limit == "tokens" and key.requests.local == 4  # nothing taken
    assert info.value.headers["Retry-After"] == "12"  # 200 tokens at 1000/min
    assert "1000 tokens per minute, 400 left now" in info.value.message


def test_a_request_larger_than_the_whole_limit_waits_for_a_full_bucket():
    key = key_state(tokens_per_minute=1000)
    lease_everything(key)
    ticket = key.admit(Estimate(10, 4096), None, 0.0, MAY_31)
    assert isinstance(ticket, Ticket) and ticket.tokens_reserved == 1000
    key.settle(ticket, Usage(10, 2000), None)
    assert key.tokens.local == 0 and key.tokens.put == -1010  # the rest charged: debt


def test_settling_gives_back_what_the_estimate_did_not_use():
    key = key_state(tokens_per_minute=10_000)
    lease_everything(key)
    ticket = key.admit(Estimate(1000, 4000), None, 0.0, MAY_31)
    assert key.tokens.local == 5000
    key.settle(ticket, Usage(900, 100), None)
    assert key.tokens.local == 9000
    assert key.tokens.open == 0


def test_the_retry_after_is_the_time_until_the_window_frees():
    key = key_state(requests_per_minute=10)
    lease_everything(key)
    for _ in range(10):
        assert isinstance(key.admit(None, None, 0.0, MAY_31), Ticket)
    with pytest.raises(KeyLimitExceeded) as info:
        key.admit(None, None, 0.0, MAY_31)
    assert info.value.headers == {"Retry-After": "6"}
    assert info.value.message == (
        "rate limit reached for this API key: 10 requests per minute; retry in 6 s"
    )
    with pytest.raises(KeyLimitExceeded) as info:
        key.admit(None, None, 4.5, MAY_31)
    assert info.value.headers == {"Retry-After": "2"}
    # After 6 s the shared row may have one again: wait for the exchange, not refuse.
    assert isinstance(key.admit(None, None, 6.0, MAY_31), Shortfall)


def test_a_budget_refusal_says_when_it_renews():
    key = key_state(budget=Budget(period=BudgetPeriod.DAY, tokens=1000))
    key.roll(MAY_31)
    lease_everything(key)
    key.settle(key.admit(Estimate(100, 800), None, 0.0, MAY_31), Usage(100, 800), None)
    with pytest.raises(BudgetExhausted) as info:
        key.admit(Estimate(50, 100), None, 0.0, MAY_31)
    assert info.value.status == 429 and info.value.type == "insufficient_quota"
    assert info.value.headers == {"Retry-After": "60"}
    assert info.value.message == (
        "this API key's budget of 1000 tokens per day has 100 left and this request may need "
        "150 tokens (its prompt and max_tokens: a lower max_tokens may fit); it renews at "
        "2026-06-01T00:00:00Z"
    )
    key.settle(key.admit(Estimate(50, 50), None, 0.0, MAY_31), Usage(50, 50), None)
    with pytest.raises(BudgetExhausted) as info:
        key.admit(Estimate(1, 1), None, 0.0, MAY_31)
    assert "budget of 1000 tokens per day is used up; it renews at" in info.value.message
    # The next day is a new counter.
    assert isinstance(key.admit(Estimate(50, 100), None, 0.0, MAY_31 + 60), Shortfall)
    assert key.budget_tokens.scope == "bt:k:2026-06-01"


def test_a_lifetime_budget_has_no_retry_after():
    key = key_state(budget=Budget(period=BudgetPeriod.LIFETIME, cost=0.01))
    key.roll(0)
    lease_everything(key)
    with pytest.raises(BudgetExhausted) as info:
        key.admit(Estimate(1000, 1000), "dear", 0.0, MAY_31)  # 0.04: more than all of it
    assert "Retry-After" not in info.value.headers
    assert "does not renew" in info.value.message


def test_an_unpriced_model_is_charged_to_a_cost_budget_at_the_highest_price():
    key = key_state(budget=Budget(period=BudgetPeriod.MONTH, cost=100))
    key.roll(MAY_31)
    lease_everything(key)
    ticket = key.admit(Estimate(1_000_000, 0), "unknown-model", 0.0, MAY_31)
    assert ticket.budget_cost_reserved == pytest.approx(10)  # the top input price
    cost = key.settle(ticket, Usage(1_000_000, 0), "unknown-model")
    assert cost == 0  # no price: the usage shows no cost...
    assert key.budget_cost.local == pytest.approx(90)  # ...but the budget was charged


def test_reconfiguring_a_key_keeps_its_leases():
    registry = Allowances()
    key = KeyState.of(KeyPolicy("k", "g", requests_per_minute=10), registry)
    first = key.requests
    first.local = 3
    key.reconfigure(KeyPolicy("k", "g", requests_per_minute=20, tokens_per_minute=100))
    assert key.requests is first and first.capacity == 20 and first.local == 3
    key.reconfigure(KeyPolicy("k", "g", tokens_per_minute=100))
    assert key.requests is None and first.retired
    registry.prune(100.0)
    assert "rpm:k" in registry.by_scope  # its lease still has to go back
    first.local = 0
    registry.prune(100.0)
    assert "rpm:k" not in registry.by_scope


# --- headers, periods, cost, refusals -------------------------------------------------------------


def test_rate_limit_headers_in_each_dialect():
    key = key_state(requests_per_minute=10, tokens_per_minute=1000)
    lease_everything(key)
    key.admit(Estimate(100, 200), None, 0.0, MAY_31)
    assert key.headers(True, 0.0, MAY_31) == [
        ("x-ratelimit-limit-requests", "10"),
        ("x-ratelimit-remaining-requests", "9"),
        ("x-ratelimit-reset-requests", "6s"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-tokens", "700"),
        ("x-ratelimit-reset-tokens", "18s"),
    ]
    assert key.headers(False, 0.0, MAY_31) == [
        ("anthropic-ratelimit-requests-limit", "10"),
        ("anthropic-ratelimit-requests-remaining", "9"),
        ("anthropic-ratelimit-requests-reset", "2026-05-31T23:59:06Z"),
        ("anthropic-ratelimit-tokens-limit", "1000"),
        ("anthropic-ratelimit-tokens-remaining", "700"),
        ("anthropic-ratelimit-tokens-reset", "2026-05-31T23:59:18Z"),
    ]


def test_budget_headers():
    key = key_state(budget=Budget(period=BudgetPeriod.MONTH, tokens=5000, cost=2.5))
    key.roll(MAY_31)
    lease_everything(key)
    key.settle(key.admit(Estimate(100, 100), "cheap", 0.0, MAY_31), Usage(100, 100), "cheap")
    assert key.headers(True, 0.0, MAY_31) == [
        ("x-gateway-budget-remaining-tokens", "4800"),
        ("x-gateway-budget-remaining-cost", "2.4997"),
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.02, "20ms"),
        (0, "0ms"),
        (6, "6s"),
        (1.25, "1.3s"),
        (59.99, "60s"),
        (60, "1m0s"),
        (90.2, "1m31s"),
    ],
)
def test_reset_durations_read_like_openais(seconds, text):
    assert duration(seconds) == text


def test_periods_are_utc_calendar_days_and_months():
    assert period_of(BudgetPeriod.DAY, MAY_31) == ("2026-05-31", MAY_31 + 60)
    assert period_of(BudgetPeriod.MONTH, MAY_31) == ("2026-05", MAY_31 + 60)
    assert period_of(BudgetPeriod.MONTH, MAY_31 + 60) == ("2026-06", MAY_31 + 60 + 30 * 86_400)
    december = 1796083200.0  # 2026-12-31T00:00:00Z
    assert period_of(BudgetPeriod.MONTH, december) == ("2026-12", 1798761600.0)
    assert period_of(BudgetPeriod.LIFETIME, MAY_31) == ("lifetime", math.inf)


def test_cost_per_million_tokens_with_cached_input():
    price = Price(input=3, output=15, cached=0.3)
    assert cost_of(Usage(1_000_000, 0), price) == pytest.approx(3)
    assert cost_of(Usage(2000, 500, cached_tokens=1000), price) == pytest.approx(
        (1000 * 3 + 1000 * 0.3 + 500 * 15) / 1e6
    )
    assert cost_of(Usage(1000, 0, cached_tokens=1000), Price(input=2, output=4)) == pytest.approx(
        0.002
    )  # no cached price: as input
    assert cost_of(Usage(1000, 1000), None) == 0


def test_a_model_the_key_may_not_use_is_refused_per_dialect():
    openai = model_not_allowed("gpt-4o", openai=True)
    assert (openai.status, openai.type) == (404, "model_not_found")
    assert "gpt-4o" in openai.message
    anthropic = model_not_allowed("claude-opus", openai=False)
    assert (anthropic.status, anthropic.type) == (403, "model_not_allowed")
    assert anthropic.message == "this API key may not use the model 'claude-opus'"


def test_a_policy_takes_the_gateway_defaults_unless_the_key_has_its_own():
    gateway = Gateway(
        id="g",
        name="g",
        key_defaults=KeyDefaults(limits=KeyLimits(requests_per_minute=5), models=("a", "b")),
        prices={"a": Price(input=1, output=2), "b": Price(input=4, output=1)},
    )
    plain = KeyPolicy.compile(ApiKey(id="k", gateway_id="g", name="k"), gateway)
    assert plain.requests_per_minute == 5 and plain.models == {"a", "b"}
    assert plain.top_price == Price(input=4, output=2)
    own = KeyPolicy.compile(
        ApiKey(id="k", gateway_id="g", name="k", limits=KeyLimits(), models=("c",)), gateway
    )
    assert not own.limited and own.models == {"c"}
    assert own.allows("c") and not own.allows("a") and own.allows(None)
