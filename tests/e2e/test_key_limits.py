"""API keys that carry limits, end to end: the gateway and fake providers on real sockets.

Each limit holds exactly on one process (virtual time, ``autojump_clock``: the memory
store is thread-free); a request takes its estimate before it is sent and is settled
once with what its providers reported (whole answers, streams, failovers, a client
gone mid-stream); refusals and rate-limit headers come in the client's dialect; the
models a key may use are enforced, by the proxy and by routing; two gateways on one
store share a limit, and each limits its own traffic while the store is away; the
usage endpoint answers from the shared counters. Real processes (``--workers 2`` on
SQLite, two instances on PostgreSQL) are in test_workers.py and test_instances.py.
"""

from __future__ import annotations

import io
import json
import logging
from contextlib import AsyncExitStack
from typing import Any

import httpx2
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import KEY, config, setup, sse_events, target
from tests.e2e.test_observability import access_records
from trio_gateway import logs
from trio_gateway.core.estimate import estimate
from trio_gateway.store import MemoryStore
from trio_gateway.testing.fake import Fault, open_fake_provider
from trio_gateway.testing.harness import is_health_check, open_gateway

MODEL = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-20241022"
#: What ``Setup.chat`` sends.
MESSAGES = [{"role": "user", "content": "Hello"}]
#: Long enough for every wait in these tests (virtual time).
TIMEOUT = 600
PRICES = {MODEL: {"input": 0.15, "output": 0.6}, CLAUDE: {"input": 0.8, "output": 4}}


def limited(
    fakes,
    *,
    limits: dict[str, Any] | None = None,
    models: list[str] | None = None,
    targets: list[dict[str, Any]] | None = None,
    prices: dict[str, Any] | None = None,
    **upstream: Any,
) -> dict[str, Any]:
    """The e2e configuration with limits (and models) on its key, and a price table."""
    made = config(
        targets or [target(fakes[0], default_model=MODEL)],
        upstream=upstream or None,
    )
    gateway = made["gateways"][0]
    gateway["prices"] = PRICES if prices is None else prices
    key = gateway["api_keys"][0]
    if limits is not None:
        key["limits"] = limits
    if models is not None:
        key["models"] = models
    return made


def posts(fake) -> list[Any]:
    """The requests ``fake`` got from clients (not the gateway's health checks)."""
    return [r for r in fake.requests if not is_health_check(r)]


async def burst(s, n: int, **body: Any) -> list[httpx2.Response]:
    """``n`` chat requests at once."""
    responses: list[httpx2.Response] = []

    async def one() -> None:
        responses.append(await s.chat(**body))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return responses


async def usage(s, **params: str) -> dict[str, Any]:
    key_id = next(iter(s.gateway.catalog.snapshot.api_keys))
    response = await s.admin.get(f"/gateways/{s.gateway_id}/keys/{key_id}/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def chat_estimate(max_tokens: int, messages=MESSAGES) -> int:
    return estimate({"messages": messages, "max_tokens": max_tokens}, 4096).total


# --- each limit, exactly, on one process ----------------------------------------------------


async def test_requests_per_minute_holds_exactly(autojump_clock):
    async with setup(
        [{}], lambda f: limited(f, limits={"requests_per_minute": 10}), timeout=TIMEOUT
    ) as s:
        responses = await burst(s, 30)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 10 + [429] * 20
        assert len(posts(s.fakes[0])) == 10  # the refused ones reached no provider
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "6"
        assert refused.json()["error"] == {
            "message": "rate limit reached for this API key: 10 requests per minute; retry in 6 s",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        assert refused.headers["x-ratelimit-limit-requests"] == "10"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"

        # Then a request every 6 s passes, and one more at once does not.
        await trio.sleep(6)
        assert (await s.chat()).status_code == 200
        assert (await s.chat()).status_code == 429
        # A key that keeps asking gets exactly its limit per minute: 20 of 120 in 2 minutes.
        passed = 0
        for _ in range(120):
            await trio.sleep(1)
            passed += (await s.chat()).status_code == 200
        assert passed == 20
        assert len(posts(s.fakes[0])) == 10 + 1 + 20


async def test_tokens_per_minute_reserves_each_requests_estimate_before_the_call(
    autojump_clock,
):
    """Three requests' estimates fit in the limit: of ten concurrent ones, three go out,
    although each uses far less than its estimate (its max_tokens)."""
    need = chat_estimate(300)
    slow = [Fault.latency(2)]
    async with setup(
        [{"faults": slow}],
        lambda f: limited(f, limits={"tokens_per_minute": 3 * need + need // 2}),
        timeout=TIMEOUT,
    ) as s:
        responses = await burst(s, 10, max_tokens=300)
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) == 3 and len(refused) == 7
        assert len(posts(s.fakes[0])) == 3
        error = refused[0].json()["error"]
        assert error["code"] == "rate_limit_exceeded" and "tokens per minute" in error["message"]
        assert f"may use up to {need}" in error["message"]
        assert int(refused[0].headers["retry-after"]) >= 1

        # Settled to what was used: the next three pass at once, without waiting for a refill.
        used = sum(r.json()["usage"]["total_tokens"] for r in ok)
        assert used < need
        # The headers of an answer are those of its end: its reservation settled already,
        # and the last of the three to end saw all three settled.
        remaining = max(int(r.headers["x-ratelimit-remaining-tokens"]) for r in ok)
        assert 3 * need < remaining <= 3 * need + need // 2
        responses = await burst(s, 3, max_tokens=300)
        assert [r.status_code for r in responses] == [200] * 3


async def test_a_token_budget_is_never_overshot_and_says_what_is_left(autojump_clock):
    budget = {"period": "lifetime", "tokens": 400}
    async with setup([{}], lambda f: limited(f, limits={"budget": budget}), timeout=TIMEOUT) as s:
        need = chat_estimate(100)
        used, passed = 0, 0
        for _ in range(100):  # the budget runs out long before
            response = await s.chat(max_tokens=100)
            if response.status_code != 200:
                break
            passed += 1
            used += response.json()["usage"]["total_tokens"]
            assert int(response.headers["x-gateway-budget-remaining-tokens"]) == 400 - used
        # Refused when the estimate no longer fits what is left: never beyond the budget.
        assert response.status_code == 429
        assert used <= 400 < used + need
        assert passed == len(posts(s.fakes[0]))
        error = response.json()["error"]
        assert error["type"] == "insufficient_quota"
        assert error["message"] == (
            f"this API key's budget of 400 tokens has {400 - used} left and this request "
            f"may need {need} tokens (its prompt and max_tokens: a lower max_tokens may fit); "
            "it does not renew"
        )
        assert "retry-after" not in response.headers  # a lifetime budget does not renew
        # A smaller request that fits still passes.
        assert (await s.chat(max_tokens=1)).status_code == 200
        told = await usage(s)
        assert told["budget"]["tokens"] == {
            "limit": 400,
            "used": told["totals"]["input_tokens"] + told["totals"]["output_tokens"],
        }


async def test_a_cost_budget_charges_the_price_of_the_model_sent(autojump_clock):
    # 0.15 per million input tokens, 0.6 output: a budget of a few requests' worth.
    budget = {"period": "month", "cost": 0.00005}
    async with setup([{}], lambda f: limited(f, limits={"budget": budget}), timeout=TIMEOUT) as s:
        spent = 0.0
        for _ in range(100):  # the budget runs out long before
            if (response := await s.chat(max_tokens=50)).status_code != 200:
                break
            u = response.json()["usage"]
            spent += (u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.6) / 1e6
        assert response.status_code == 429
        assert response.json()["error"]["type"] == "insufficient_quota"
        assert 0 < spent <= 0.00005
        assert "it renews at" in response.json()["error"]["message"]
        assert int(response.headers["retry-after"]) > 0  # until the month's end
        told = await usage(s)
        assert told["totals"]["cost"] == pytest.approx(spent)
        assert told["budget"]["cost"]["used"] == pytest.approx(spent)
        assert told["budget"]["period"] == "month" and told["budget"]["ends"].endswith(
            "-01T00:00:00Z"
        )


# --- reserve and settle: streams, failovers, a client gone ----------------------------------


async def test_a_stream_holds_its_estimate_until_it_ends_then_settles_to_its_usage(
    autojump_clock,
):
    """Telemetry off: the key's usage alone makes the gateway ask for the stream's usage."""
    budget = {"period": "lifetime", "tokens": 5000}
    stall = [Fault.stall_stream(10, after_chunks=2)]
    async with setup(
        [{"faults": stall}],
        lambda f: limited(f, limits={"budget": budget}),
        timeout=TIMEOUT,
        metrics=False,
        access_log=False,
    ) as s:
        reserved = chat_estimate(200)
        async with s.client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True},
        ) as stream:
            assert stream.status_code == 200
            assert int(stream.headers["x-gateway-budget-remaining-tokens"]) == 5000 - reserved
            chunks = stream.aiter_bytes()
            await anext(chunks)
            # Mid-stream (stalled): a whole answer meanwhile sees the stream's reservation.
            other = await s.chat()
            used = other.json()["usage"]["total_tokens"]
            left = int(other.headers["x-gateway-budget-remaining-tokens"])
            assert left == 5000 - reserved - used
            body = b"".join([chunk async for chunk in chunks])
        assert b"data: [DONE]" in body and b'"usage"' not in body  # the client did not ask
        (sent, _) = [json.loads(r.body) for r in posts(s.fakes[0])]
        assert sent["stream_options"] == {"include_usage": True}  # the gateway did

        told = await usage(s)
        streamed = told["totals"]["input_tokens"] + told["totals"]["output_tokens"] - used
        assert 0 < streamed < reserved  # its usage, not its estimate
        assert told["budget"]["tokens"]["used"] == streamed + used
        assert told["totals"]["requests"] == 2


async def test_a_client_gone_mid_stream_is_charged_the_estimate(autojump_clock):
    budget = {"period": "lifetime", "tokens": 5000}
    stall = [Fault.stall_stream(60, after_chunks=2)]
    async with setup(
        [{"faults": stall}], lambda f: limited(f, limits={"budget": budget}), timeout=TIMEOUT
    ) as s:
        async with s.client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True},
        ) as stream:
            await anext(stream.aiter_bytes())
        await trio.sleep(1)  # the gateway sees the client go
        told = await usage(s)
        guess = estimate({"messages": MESSAGES, "max_tokens": 200}, 4096)
        assert told["totals"]["output_tokens"] == guess.output_tokens == 200
        assert told["totals"]["input_tokens"] == guess.input_tokens
        assert told["budget"]["tokens"]["used"] == guess.total
        assert told["totals"]["requests"] == 1


async def test_a_failover_is_charged_once_for_what_every_provider_reported(autojump_clock):
    """The first target's stream breaks after reporting its input (message_start), the
    second answers: the request is charged both reports, once."""
    budget = {"period": "lifetime", "tokens": 100_000}

    def two(fakes):
        return limited(
            fakes,
            limits={"budget": budget},
            targets=[
                target(fakes[0], "anthropic", priority=1, default_model=CLAUDE),
                target(fakes[1], "anthropic", priority=2, default_model=CLAUDE),
            ],
        )

    broken = [Fault.error_event(529, after_chunks=1)]
    async with setup([{"faults": broken}, {}], two, timeout=TIMEOUT) as s:
        response = await s.messages(CLAUDE, stream=True, max_tokens=300)
        assert response.status_code == 200
        outcomes = response.headers["x-gateway-attempts"]
        assert "outcome=stream_error" in outcomes and "outcome=200" in outcomes
        events = [json.loads(data) for _, data in sse_events(response.text)]
        start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
        end = next(e for e in events if e["type"] == "message_delta")["usage"]
        # The broken attempt reported the same input, and one output token, before breaking.
        first = start["input_tokens"] + 1
        second = start["input_tokens"] + end["output_tokens"]
        told = await usage(s)
        assert told["totals"]["requests"] == 1
        assert told["totals"]["input_tokens"] == 2 * start["input_tokens"]
        assert told["totals"]["output_tokens"] == 1 + end["output_tokens"]
        assert told["budget"]["tokens"]["used"] == first + second

        # A whole answer after a 503: charged for the one answer.
        s.fakes[0].set_faults(Fault.error(503))
        response = await s.messages(CLAUDE, max_tokens=300)
        assert (
            response.status_code == 200 and "outcome=503" in response.headers["x-gateway-attempts"]
        )
        reported = response.json()["usage"]
        after = await usage(s)
        assert after["totals"]["requests"] == 2
        assert after["budget"]["tokens"]["used"] == first + second + (
            reported["input_tokens"] + reported["output_tokens"]
        )


async def test_a_request_no_provider_answered_costs_tokens_nothing(autojump_clock):
    budget = {"period": "lifetime", "tokens": 100_000}
    async with setup(
        [{"faults": [Fault.error(503)]}],
        lambda f: limited(f, limits={"budget": budget, "requests_per_minute": 100}),
        timeout=TIMEOUT,
    ) as s:
        response = await s.chat(max_tokens=500)
        assert response.status_code == 503
        assert int(response.headers["x-gateway-budget-remaining-tokens"]) == 100_000
        assert int(response.headers["x-ratelimit-remaining-requests"]) == 99  # it counts
        told = await usage(s)
        assert told["totals"]["requests"] == 1 and told["totals"]["output_tokens"] == 0


# --- answers in the client's dialect ---------------------------------------------------------

OPENAI_HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}
ANTHROPIC_HEADERS = {
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
}


def ratelimit_headers(response: httpx2.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if "ratelimit" in name or name.startswith("x-gateway-budget")
    }


async def test_every_response_of_a_limited_key_carries_its_limits_in_the_clients_naming(
    autojump_clock,
):
    limits = {"requests_per_minute": 5, "tokens_per_minute": 100_000}

    def both(fakes):
        return limited(
            fakes,
            limits=limits,
            targets=[
                target(fakes[0], default_model=MODEL, models=[MODEL]),
                target(fakes[1], "anthropic", default_model=CLAUDE, models=[CLAUDE]),
            ],
        )

    async with setup([{}, {}], both, timeout=TIMEOUT) as s:
        chat = await s.chat()
        assert chat.status_code == 200
        assert set(ratelimit_headers(chat)) == OPENAI_HEADERS
        assert chat.headers["x-ratelimit-limit-requests"] == "5"
        assert chat.headers["x-ratelimit-remaining-requests"] == "4"
        assert chat.headers["x-ratelimit-reset-requests"] == "12s"
        assert chat.headers["x-ratelimit-limit-tokens"] == "100000"

        messages = await s.messages(CLAUDE)  # the Anthropic API: Anthropic's names
        assert messages.status_code == 200
        assert set(ratelimit_headers(messages)) == ANTHROPIC_HEADERS
        assert messages.headers["anthropic-ratelimit-requests-remaining"] == "3"
        assert messages.headers["anthropic-ratelimit-requests-reset"].endswith("Z")

        # Errors too: a body that is no JSON, a stream, the 429.
        bad = await s.client.post(
            "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and set(ratelimit_headers(bad)) == OPENAI_HEADERS
        async with s.client.stream(
            "POST",
            "/v1/messages",
            json={"model": CLAUDE, "max_tokens": 20, "messages": MESSAGES, "stream": True},
        ) as stream:
            assert set(ratelimit_headers(stream)) == ANTHROPIC_HEADERS
            await stream.aread()
        # The 400 took nothing: two more pass (the fourth and fifth), then the limit holds.
        assert [(await s.chat()).status_code for _ in range(2)] == [200, 200]
        refused = await s.messages(CLAUDE)
        assert refused.status_code == 429
        assert refused.json() == {
            "type": "error",
            "error": {
                "type": "rate_limit_error",
                "message": "rate limit reached for this API key: 5 requests per minute; "
                "retry in 12 s",
            },
        }
        assert refused.headers["retry-after"] == "12"
        assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"


async def test_a_key_without_limits_gets_no_limit_headers_and_is_counted():
    async with setup([{}], lambda f: limited(f), timeout=TIMEOUT) as s:
        response = await s.chat()
        assert response.status_code == 200 and ratelimit_headers(response) == {}
        reported = response.json()["usage"]
        told = await usage(s)
        assert told["totals"]["requests"] == 1
        assert told["totals"]["input_tokens"] == reported["prompt_tokens"]
        assert told["totals"]["output_tokens"] == reported["completion_tokens"]
        assert told["budget"] is None
        assert not s.gateway.runtime.limiter.keys  # nothing leased, nothing to exchange


# --- the models a key may use ----------------------------------------------------------------


async def test_a_model_the_key_may_not_use_is_refused_in_each_dialects_convention():
    def two(fakes):
        return limited(
            fakes,
            models=[MODEL],
            targets=[target(fakes[0], models=[MODEL, "gpt-4o"], default_model=MODEL)],
        )

    async with setup([{}], two, timeout=TIMEOUT) as s:
        assert (await s.chat(MODEL)).status_code == 200
        openai = await s.chat("gpt-4o")
        assert openai.status_code == 404
        assert openai.json()["error"] == {
            "message": "The model 'gpt-4o' does not exist or this API key does not have "
            "access to it",
            "type": "not_found_error",
            "param": None,
            "code": "model_not_found",
        }
        anthropic = await s.messages("gpt-4o")
        assert anthropic.status_code == 403
        assert anthropic.json()["error"] == {
            "type": "permission_error",
            "message": "this API key may not use the model 'gpt-4o'",
        }
        assert len(posts(s.fakes[0])) == 1  # nothing was sent for them


async def test_routing_never_sends_a_default_model_the_key_may_not_use():
    """A request without a model, or with one no target serves, gets a target's
    default_model: only one the key may use; if none, the refusal names the model."""

    def three(fakes):
        return limited(
            fakes,
            models=[MODEL, "claude-x"],
            targets=[
                target(fakes[0], models=["gpt-4o"], default_model="gpt-4o"),
                target(fakes[1], models=[MODEL], default_model=MODEL),
            ],
        )

    async with setup([{}, {}], three, timeout=TIMEOUT) as s:
        allowed_target = s.target_ids()[1]
        for _ in range(4):  # round-robin would alternate: only the allowed default is sent
            response = await s.chat(None)
            assert response.status_code == 200
            assert response.headers["x-selected-model"] == MODEL
            assert response.headers["x-selected-target"] == allowed_target
        fallback = await s.chat("claude-x")  # allowed, served by nobody: falls back
        assert fallback.status_code == 200
        assert fallback.headers["x-gateway-model-fallback"] == f"claude-x -> {MODEL}"
        assert posts(s.fakes[0]) == []

        # The only default left is one the key may not use: refused, naming it.
        key_id = next(iter(s.gateway.catalog.snapshot.api_keys))
        changed = await s.admin.put(
            f"/gateways/{s.gateway_id}/keys/{key_id}", json={"models": ["claude-x"]}
        )
        assert changed.status_code == 200, changed.text
        refused = await s.chat(None)
        assert refused.status_code == 403
        message = refused.json()["error"]["message"]
        assert "may not use the model 'gpt-4o'" in message or f"model '{MODEL}'" in message
        assert "names no model" in message
        assert posts(s.fakes[0]) == []


# --- usage and cost ----------------------------------------------------------------------------


async def test_the_usage_endpoint_answers_per_day_and_model_with_cost():
    """Cached input tokens are priced at the model's cached price (a scripted provider
    reports them, as OpenAI does in prompt_tokens_details)."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        model = json.loads(request.content)["model"]
        return httpx2.Response(
            200,
            json={
                "id": "c",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 2000,
                    "completion_tokens": 100,
                    "total_tokens": 2100,
                    "prompt_tokens_details": {"cached_tokens": 1500},
                },
            },
        )

    provider = {
        "provider": "openai",
        "base_url": "http://provider.invalid",
        "models": [MODEL, "gpt-4o"],
        "default_model": MODEL,
        "credentials": {"header_name": "Authorization", "header_value": "Bearer sk-x"},
    }
    made = limited(
        [],
        targets=[provider],
        prices={MODEL: {"input": 0.15, "output": 0.6, "cached": 0.075}},
        limits={"budget": {"period": "day", "tokens": 1_000_000}},
    )
    async with AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            open_gateway(made, transport=httpx2.MockTransport(answer))
        )
        client = await stack.enter_async_context(
            httpx2.AsyncClient(base_url=running.proxy_url, headers={"X-Api-Key": KEY})
        )
        admin = await stack.enter_async_context(
            httpx2.AsyncClient(base_url=running.admin_url + "/api/v1")
        )
        for model in (MODEL, MODEL, "gpt-4o"):
            response = await client.post(
                "/v1/chat/completions", json={"model": model, "messages": MESSAGES}
            )
            assert response.status_code == 200
        gateway_id = next(iter(running.catalog.snapshot.gateways))
        key_id = next(iter(running.catalog.snapshot.api_keys))
        base = f"/gateways/{gateway_id}/keys/{key_id}/usage"
        told = (await admin.get(base)).json()
        # (2000 - 1500) * 0.15 + 1500 * 0.075 + 100 * 0.6, per million; gpt-4o has no price.
        one = (500 * 0.15 + 1500 * 0.075 + 100 * 0.6) / 1e6
        (day,) = told["days"]
        assert told["key_id"] == key_id and told["since"] is None
        assert day["models"] == [
            {
                "model": "gpt-4o",
                "requests": 1,
                "input_tokens": 2000,
                "output_tokens": 100,
                "cached_tokens": 1500,
                "cost": 0,
                "refused": 0,
            },
            {
                "model": MODEL,
                "requests": 2,
                "input_tokens": 4000,
                "output_tokens": 200,
                "cached_tokens": 3000,
                "cost": pytest.approx(2 * one),
                "refused": 0,
            },
        ]
        assert day["totals"] == told["totals"]
        assert told["totals"]["requests"] == 3 and told["totals"]["cost"] == pytest.approx(2 * one)
        assert told["budget"] == {
            "period": "day",
            "label": day["day"],
            "ends": told["budget"]["ends"],
            "tokens": {"limit": 1_000_000, "used": 6300},
            "cost": None,
        }
        # Days select; a day outside has nothing.
        assert (await admin.get(base, params={"since": day["day"]})).json()["totals"] == told[
            "totals"
        ]
        empty = (await admin.get(base, params={"until": "2000-01-01"})).json()
        assert empty["days"] == [] and empty["totals"]["requests"] == 0
        bad = await admin.get(base, params={"since": "yesterday"})
        assert bad.status_code == 422
        assert bad.json()["error"]["details"] == [
            {"loc": "since", "msg": "must be a day as YYYY-MM-DD"}
        ]
        backwards = await admin.get(base, params={"since": "2026-02-02", "until": "2026-02-01"})
        assert backwards.status_code == 422
        missing = await admin.get(f"/gateways/{gateway_id}/keys/nope/usage")
        assert missing.status_code == 404
        not_a_key = await admin.get(f"/gateways/{gateway_id}/rules/{key_id}/usage")
        assert not_a_key.status_code == 404


@pytest.fixture
def access_json():
    """The access log's JSON lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    logs.configure("text", "WARNING", stream=io.StringIO())
    structured = io.StringIO()
    handler = logging.StreamHandler(structured)
    handler.setFormatter(logs.JsonFormatter())
    root.addHandler(handler)
    yield structured
    root.handlers[:] = handlers
    root.setLevel(level)


async def test_cost_and_refusals_in_the_access_log_and_the_metrics(access_json):
    structured = access_json
    async with setup(
        [{}], lambda f: limited(f, limits={"requests_per_minute": 1}), timeout=TIMEOUT
    ) as s:
        ok = await s.chat()
        refused = await s.chat()
        assert refused.status_code == 429
        used = ok.json()["usage"]
        cost = (used["prompt_tokens"] * 0.15 + used["completion_tokens"] * 0.6) / 1e6
        async with httpx2.AsyncClient(base_url=s.gateway.admin_url) as admin:
            text = (await admin.get("/metrics")).text
    lines = {r["request_id"]: r for r in access_records(structured)}
    assert lines[ok.headers["x-request-id"]]["cost"] == pytest.approx(cost)
    line = lines[refused.headers["x-request-id"]]
    assert line["refused_by"] == "requests" and line["status"] == 429 and line["cost"] is None
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    cost_key = (
        "trio_gateway_cost_total",
        (("gateway", "e2e"), ("key", "k"), ("model", MODEL)),
    )
    assert samples[cost_key] == pytest.approx(cost)
    refusal_key = (
        "trio_gateway_key_refusals_total",
        (("gateway", "e2e"), ("key", "k"), ("limit", "requests")),
    )
    assert samples[refusal_key] == 1


async def test_explain_reports_a_refusal_by_the_keys_limits_without_taking_anything(
    autojump_clock,
):
    async with setup(
        [{}],
        lambda f: limited(f, limits={"requests_per_minute": 2}, models=[MODEL]),
        timeout=TIMEOUT,
    ) as s:

        async def explain(model: str = MODEL) -> dict[str, Any]:
            response = await s.admin.post(
                f"/gateways/{s.gateway_id}/explain",
                json={
                    "path": "/v1/chat/completions",
                    "headers": {"X-Api-Key": KEY},
                    "body": {"model": model, "messages": MESSAGES},
                },
            )
            assert response.status_code == 200, response.text
            return response.json()

        for _ in range(5):  # explaining takes nothing of the limit
            told = await explain()
            assert told["next_target"] and "refused" not in told
        assert told["rate_limits"]["x-ratelimit-remaining-requests"] == "2"
        assert [(await s.chat()).status_code for _ in range(2)] == [200, 200]
        told = await explain()
        assert told["refused"]["status"] == 429
        assert told["refused"]["headers"]["Retry-After"] == "30"
        assert told["refused"]["headers"]["x-ratelimit-remaining-requests"] == "0"
        assert told["refused"]["body"]["error"]["code"] == "rate_limit_exceeded"
        other = await explain("gpt-4o")
        assert other["refused"]["status"] == 404
        assert other["refused"]["body"]["error"]["code"] == "model_not_found"
        # Still refused for real: explain did not count as a request, nor as a refusal.
        assert (await s.chat()).status_code == 429
        assert (await usage(s))["totals"]["refused"] == 1


# --- two gateways on one store; the store away -------------------------------------------------


async def test_two_gateways_share_a_limit_and_each_limits_alone_while_the_store_is_away(
    autojump_clock,
):
    """Handles of one memory store stand for two instances on one database (virtual time).

    Shared: of 30 concurrent requests spread over both, at most 10 pass (at least 10
    less a lease per instance: docs/keys.md). The store away: each instance enforces
    the limit on its own traffic (fail open with a local limit: at most 2 * 10), and
    the usage counted meanwhile is written once it is back.
    """
    store = MemoryStore()
    one, two = store.connect(), store.connect()
    with trio.fail_after(TIMEOUT):
        async with open_fake_provider(name="f", api_key="sk-fake-0") as fake:
            made = limited([fake], limits={"requests_per_minute": 10})
            async with (
                open_gateway(made, store=one) as a,
                open_gateway(store=two) as b,
                httpx2.AsyncClient(base_url=a.proxy_url, headers={"X-Api-Key": KEY}) as to_a,
                httpx2.AsyncClient(base_url=b.proxy_url, headers={"X-Api-Key": KEY}) as to_b,
                httpx2.AsyncClient(base_url=a.admin_url + "/api/v1") as admin,
            ):
                key_id = next(iter(a.catalog.snapshot.api_keys))
                gateway_id = next(iter(a.catalog.snapshot.gateways))
                usage_path = f"/gateways/{gateway_id}/keys/{key_id}/usage"

                async def spread(n: int) -> tuple[int, int]:
                    passed = {"a": 0, "b": 0}

                    async def one_request(name: str, client: httpx2.AsyncClient) -> None:
                        response = await client.post(
                            "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}
                        )
                        assert response.status_code in (200, 429), response.text
                        passed[name] += response.status_code == 200

                    async with trio.open_nursery() as nursery:
                        for _ in range(n):
                            nursery.start_soon(one_request, "a", to_a)
                            nursery.start_soon(one_request, "b", to_b)
                    return passed["a"], passed["b"]

                on_a, on_b = await spread(15)
                assert 10 - 2 <= on_a + on_b <= 10
                shared = on_a + on_b

                await trio.sleep(70)  # the bucket is full again
                one.set_outage("connection refused")
                two.set_outage("connection refused")
                away = await admin.get(usage_path)
                assert away.status_code == 503
                assert "unreachable" in away.json()["error"]["message"]
                on_a, on_b = await spread(15)
                assert on_a == 10 and on_b == 10  # each its own limit: 2 * 10 in all
                assert len(posts(fake)) == shared + 20

                one.set_outage(None)
                two.set_outage(None)
                await trio.sleep(3)  # each tries the store again every second
                back = await admin.get(usage_path)
                assert back.status_code == 200, back.text
                totals = back.json()["totals"]
                assert totals["requests"] == shared + 20  # none lost to the outage
                assert totals["refused"] == 30 - shared + 10
                # Shared again: the bucket of both is the store's, spent by the outage.
                on_a, on_b = await spread(5)
                assert on_a + on_b <= 10
