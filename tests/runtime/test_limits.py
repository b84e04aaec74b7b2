"""The runtime's limiter in virtual time: one process, two instances on one store, the store away.

Every test runs under ``autojump_clock`` on the memory store (thread-free), whose
``connect()`` handles stand for instances: what one limiter leases, the other
cannot. The wall clock is virtual too (``BASE`` + Trio's clock), so budget periods
and usage days turn over when the test sleeps past midnight.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trio_gateway.config.catalog import Snapshot
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
from trio_gateway.errors import BudgetExhausted, KeyLimitExceeded
from trio_gateway.providers.usage import NOTHING, Usage
from trio_gateway.runtime import limits as runtime_limits
from trio_gateway.runtime.limits import Limiter
from trio_gateway.store import MemoryStore

#: 2026-05-31T23:00:00Z: an hour before a day (and a month) ends.
BASE = 1780268400.0
PRICES = {"gpt-4o": Price(input=2.5, output=10), "mini": Price(input=0.15, output=0.6)}


def snapshot(*keys: ApiKey, gateway: Gateway | None = None) -> Snapshot:
    gateway = gateway or Gateway(id="g", name="g", prices=PRICES)
    return Snapshot.of([gateway, *keys])


def key(key_id: str = "k", **limits) -> ApiKey:
    return ApiKey(id=key_id, gateway_id="g", name=key_id, limits=KeyLimits(**limits))


@asynccontextmanager
async def running(store, *keys: ApiKey, gateway: Gateway | None = None) -> AsyncIterator[Limiter]:
    limiter = Limiter(store, wall=lambda: BASE + trio.current_time())
    limiter.update(snapshot(*keys, gateway=gateway))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        yield limiter
        nursery.cancel_scope.cancel()


async def burst(limiter: Limiter, n: int, estimate: Estimate | None = None, key_id: str = "k"):
    """``n`` requests at once; the tickets of those admitted and the refusals."""
    tickets, refusals = [], []

    async def one() -> None:
        try:
            tickets.append(await limiter.admit(key_id, "g", "gpt-4o", estimate))
        except KeyLimitExceeded as exc:
            refusals.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return tickets, refusals


async def test_requests_per_minute_holds_exactly_on_one_process(autojump_clock):
    async with running(MemoryStore(), key(requests_per_minute=10)) as limiter:
        tickets, refusals = await burst(limiter, 30)
        assert len(tickets) == 10 and len(refusals) == 20
        assert {r.headers["Retry-After"] for r in refusals} == {"6"}
        assert {r.limit for r in refusals} == {"requests"}
        # Then one request a second for ten minutes: one in six passes, exactly.
        passed = 0
        for _ in range(600):
            await trio.sleep(1)
            try:
                limiter.settle(await limiter.admit("k", "g", "gpt-4o", None), NOTHING)
                passed += 1
            except KeyLimitExceeded as exc:
                assert 1 <= int(exc.headers["Retry-After"]) <= 6
        assert passed == 100  # 600 s at 10 a minute


async def test_requests_per_minute_holds_across_two_instances(autojump_clock):
    """30 concurrent requests, half on each instance: exactly 10 pass in all."""
    store = MemoryStore()
    async with (
        running(store.connect(), key(requests_per_minute=10)) as a,
        running(store.connect(), key(requests_per_minute=10)) as b,
    ):
        results = {}

        async def on(limiter: Limiter, name: str) -> None:
            results[name] = await burst(limiter, 15)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on, a, "a")
            nursery.start_soon(on, b, "b")
        assert len(results["a"][0]) + len(results["b"][0]) == 10
        # A minute later the bucket is full again, and shared again: 10 more in all.
        await trio.sleep(70)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on, b, "b")
            nursery.start_soon(on, a, "a")
        assert len(results["a"][0]) + len(results["b"][0]) == 10


async def test_tokens_are_reserved_before_the_call_and_settled_after(autojump_clock):
    async with running(MemoryStore(), key(tokens_per_minute=1000)) as limiter:
        first = await limiter.admit("k", "g", "gpt-4o", Estimate(100, 500))
        # The first request has not reported yet: its 600 are reserved, 400 are left.
        with pytest.raises(KeyLimitExceeded) as info:
            await limiter.admit("k", "g", "gpt-4o", Estimate(100, 500))
        assert info.value.limit == "tokens"
        headers = dict(limiter.headers(first, openai=True))
        assert headers["x-ratelimit-remaining-tokens"] == "400"
        # It used 150: the rest comes back at once.
        limiter.settle(first, Usage(100, 50))
        assert dict(limiter.headers("k", openai=True))["x-ratelimit-remaining-tokens"] == "850"
        second = await limiter.admit("k", "g", "gpt-4o", Estimate(100, 500))
        limiter.settle(second, Usage(100, 500))
        assert dict(limiter.headers("k", openai=True))["x-ratelimit-remaining-tokens"] == "250"


async def test_a_settled_ticket_is_not_charged_again(autojump_clock):
    """A failed-over request settles once, for the sum of what its attempts reported."""
    budget = Budget(period=BudgetPeriod.LIFETIME, tokens=10_000)
    store = MemoryStore()
    async with running(store, key(budget=budget)) as limiter:
        ticket = await limiter.admit("k", "g", "gpt-4o", Estimate(1000, 1000))
        limiter.settle(ticket, Usage(40, 0) + Usage(900, 300), "gpt-4o")
        limiter.settle(ticket, Usage(900, 300), "gpt-4o")  # a second settle: ignored
        await trio.sleep(5)  # idle: the lease goes back
    assert store._data.limits["bt:k:lifetime"].value == 1240


async def test_a_daily_budget_runs_out_and_renews_at_midnight(autojump_clock):
    budget = Budget(period=BudgetPeriod.DAY, tokens=1000)
    async with running(MemoryStore(), key(budget=budget)) as limiter:
        for _ in range(4):
            ticket = await limiter.admit("k", "g", "gpt-4o", Estimate(50, 200))
            limiter.settle(ticket, Usage(50, 200))
        with pytest.raises(BudgetExhausted) as info:
            await limiter.admit("k", "g", "gpt-4o", Estimate(50, 200))
        assert info.value.limit == "budget"
        assert info.value.headers["Retry-After"] == "3600"  # until midnight UTC
        await trio.sleep(3600)
        ticket = await limiter.admit("k", "g", "gpt-4o", Estimate(50, 200))
        limiter.settle(ticket, Usage(50, 200))
        status = await limiter.budget("k")
        assert (status.label, status.tokens_used, status.tokens_limit) == ("2026-06-01", 250, 1000)


async def test_a_cost_budget_is_charged_at_the_models_price(autojump_clock):
    budget = Budget(period=BudgetPeriod.MONTH, cost=1.0)
    async with running(MemoryStore(), key(budget=budget)) as limiter:
        ticket = await limiter.admit("k", "g", "gpt-4o", Estimate(100_000, 10_000))
        cost = limiter.settle(ticket, Usage(100_000, 10_000), "gpt-4o")
        assert cost == pytest.approx(0.35)
        status = await limiter.budget("k")
        assert status.cost_used == pytest.approx(0.35) and status.label == "2026-05"
        with pytest.raises(BudgetExhausted, match=r"has 0\.65 left"):
            await limiter.admit("k", "g", "gpt-4o", Estimate(200_000, 20_000))


async def test_usage_is_counted_for_every_key_and_flushed_to_the_store(autojump_clock):
    store = MemoryStore()
    plain = ApiKey(id="plain", gateway_id="g", name="plain")
    async with (
        running(store.connect(), plain, key(requests_per_minute=1)) as a,
        running(store.connect(), plain, key(requests_per_minute=1)) as b,
    ):
        for limiter in (a, b):
            ticket = await limiter.admit("plain", "g", "gpt-4o", None)
            assert ticket.key is None  # no limits: nothing reserved
            limiter.settle(ticket, Usage(1000, 100, cached_tokens=500), "gpt-4o")
        limiter.settle(await a.admit("k", "g", "mini", None), None, "mini")  # no usage reported
        with pytest.raises(KeyLimitExceeded):
            await b.admit("k", "g", "mini", None)
        await trio.sleep(runtime_limits.FLUSH_S + runtime_limits.TICK_S)
        rows = await store.read_usage("plain")
        assert [
            (r.model, r.requests, r.input_tokens, r.output_tokens, r.cached_tokens) for r in rows
        ] == [("gpt-4o", 2, 2000, 200, 1000)]
        assert rows[0].cost == pytest.approx(2 * (1000 * 2.5 + 100 * 10) / 1e6)
        assert rows[0].day == "2026-05-31"
        [row] = await store.read_usage("k")
        assert (row.requests, row.refused) == (1, 1)


async def test_the_store_away_each_instance_enforces_the_limit_alone(autojump_clock):
    """Fail open with a local limit: while one instance cannot reach the store it admits up
    to the whole limit by itself, so the two admit at most twice the limit; once it is back
    the limit is shared again, and what was spent meanwhile is charged to the budget."""
    store = MemoryStore()
    cut = store.connect()
    budget = Budget(period=BudgetPeriod.LIFETIME, tokens=100_000)
    limits = {"requests_per_minute": 10, "budget": budget}
    async with running(cut, key(**limits)) as a, running(store.connect(), key(**limits)) as b:
        cut.set_outage("the database went away")
        ticket = await a.admit("k", "g", "gpt-4o", Estimate(10, 10))  # finds out, goes alone
        a.settle(ticket, Usage(10, 10))
        assert a.statistics().alone
        tickets_a, _ = await burst(a, 15, Estimate(10, 10))
        tickets_b, _ = await burst(b, 15, Estimate(10, 10))
        assert 1 + len(tickets_a) == 10 and len(tickets_b) == 10  # N x the limit, N = 2
        for ticket in tickets_a:
            a.settle(ticket, Usage(10, 10))
        for ticket in tickets_b:
            b.settle(ticket, Usage(10, 10))
        cut.set_outage(None)
        await trio.sleep(runtime_limits.RETRY_S + 3)
        assert not a.statistics().alone
        await trio.sleep(60)
        # Shared again: at most 10 in a minute over both (one may be stranded in A's
        # lease of one request, taken ahead for its next request).
        results = await burst(a, 8, Estimate(1, 1)), await burst(b, 8, Estimate(1, 1))
        assert len(results[0][0]) == 8
        assert 9 <= sum(len(tickets) for tickets, _ in results) <= 10
        for limiter, (tickets, _) in zip((a, b), results, strict=True):
            for ticket in tickets:
                limiter.settle(ticket, Usage(1, 1))
        await trio.sleep(5)
    admitted = 20 + sum(len(tickets) for tickets, _ in results)
    assert store._data.limits["bt:k:lifetime"].value == 20 * 20 + (admitted - 20) * 2
    usage = await store.read_usage("k")
    assert (
        sum(r.requests for r in usage) == admitted
    )  # nothing lost while it was away  # nothing lost while it was away


async def test_shutdown_gives_the_leases_back(autojump_clock):
    store = MemoryStore()
    budget = Budget(period=BudgetPeriod.LIFETIME, tokens=1_000_000)
    async with running(store, key(budget=budget)) as limiter:
        for _ in range(50):
            ticket = await limiter.admit("k", "g", "gpt-4o", Estimate(1000, 1000))
            limiter.settle(ticket, Usage(500, 500))
            await trio.sleep(0.01)
        assert store._data.limits["bt:k:lifetime"].value > 50_000  # leased ahead
    assert store._data.limits["bt:k:lifetime"].value == 50_000


async def test_a_busy_key_is_leased_in_bulk_not_per_request(autojump_clock):
    async with running(MemoryStore(), key(requests_per_minute=600_000)) as limiter:
        for _ in range(4000):  # 1000 a second for 4 s
            limiter.settle(await limiter.admit("k", "g", "gpt-4o", None), NOTHING)
            await trio.sleep(0.001)
        stats = limiter.statistics()
        assert stats.exchanges < 60  # about one per lease of ~a second, plus the ramp-up


async def test_limits_follow_the_configuration(autojump_clock):
    store = MemoryStore()
    async with running(store, key(requests_per_minute=2)) as limiter:
        tickets, _ = await burst(limiter, 5)
        assert len(tickets) == 2
        limiter.update(snapshot(key(requests_per_minute=10)))  # raised: room at once
        tickets, _ = await burst(limiter, 10)
        assert len(tickets) == 8
        limiter.update(snapshot(key()))  # no limits left: usage only
        ticket = await limiter.admit("k", "g", "gpt-4o", None)
        assert ticket.key is None and limiter.headers("k", openai=True) == []
        # Gateway defaults apply to a key without limits of its own.
        defaults = Gateway(
            id="g",
            name="g",
            key_defaults=KeyDefaults(limits=KeyLimits(requests_per_minute=1), models=("mini",)),
        )
        limiter.update(snapshot(ApiKey(id="k", gateway_id="g", name="k"), gateway=defaults))
        assert limiter.policies["k"].models == {"mini"}
        await trio.sleep(60)
        tickets, refusals = await burst(limiter, 3)
        assert (len(tickets), len(refusals)) == (1, 2)
        limiter.update(snapshot())  # the key deleted: its state goes
        assert limiter.keys == {}


async def test_a_charge_settles_once_by_the_rules_of_docs_keys_md(autojump_clock):
    """What a request's :class:`Charge` settles, as its attempts went."""
    budget = Budget(period=BudgetPeriod.LIFETIME, tokens=1_000_000)
    store = MemoryStore()
    guess = Estimate(100, 400)
    async with running(store, key(budget=budget, requests_per_minute=100)) as limiter:
        limiter.cancel(await limiter.admit("k", "g", "gpt-4o", guess))  # the budget's period

        async def charged(*steps) -> tuple[float, float]:
            """Budget tokens and requests used by one request going through ``steps``."""
            before = limiter.keys["k"].budget_tokens.remaining(trio.current_time())
            requests = limiter.keys["k"].requests.remaining(trio.current_time())
            charge = limiter.charge(await limiter.admit("k", "g", "gpt-4o", guess))
            for step in steps:
                step(charge)
            charge.end()
            charge.end()  # ended once: a second end changes nothing
            now = trio.current_time()
            after = limiter.keys["k"].budget_tokens.remaining(now)
            return before - after, requests - limiter.keys["k"].requests.remaining(now)

        def sent(charge):
            charge.sent("gpt-4o")

        def failed(usage=None):
            return lambda charge: charge.reported(usage, answered=False)

        def answered(usage=None):
            return lambda charge: charge.reported(usage, answered=True)

        # Failed over: what each provider reported, summed.
        both = await charged(sent, failed(Usage(30, 1)), sent, answered(Usage(30, 70)))
        assert both == (131, 1)
        # The answer said nothing, or an attempt was still out (client gone): the estimate.
        assert await charged(sent, answered(Usage(model="gpt-4o"))) == (500, 1)
        assert await charged(sent, failed(Usage(30, 1)), sent) == (500, 1)
        # No provider answered: no tokens, the request counts.
        assert await charged(sent, failed(), sent, failed()) == (0, 1)
        # No attempt at all (nothing could take it): it does not count.
        assert await charged() == (0, 0)
        await trio.sleep(runtime_limits.FLUSH_S + runtime_limits.TICK_S)
    [row] = await store.read_usage("k")
    assert (row.requests, row.input_tokens, row.output_tokens) == (4, 60 + 100 + 100, 71 + 800)


async def test_explain_checks_the_limits_without_taking_anything(autojump_clock):
    async with running(MemoryStore(), key(requests_per_minute=2)) as limiter:
        for _ in range(5):
            assert limiter.check("k", "gpt-4o", None) is None
        tickets, _ = await burst(limiter, 2)
        assert len(tickets) == 2
        refusal = limiter.check("k", "gpt-4o", None)
        assert isinstance(refusal, KeyLimitExceeded) and refusal.headers["Retry-After"] == "30"
        assert limiter.book.pending("k") == []  # a check is not a refusal
        assert limiter.check("plain", "gpt-4o", None) is None  # a key without limits
