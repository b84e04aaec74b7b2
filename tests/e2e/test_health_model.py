"""The health model's promises, end to end, with the guide's health settings and default budgets.

Everything runs in virtual time (``autojump_clock``): the gateway, the shipped fakes
and the client share the test's Trio loop over real loopback sockets, so a 30 s
first-byte budget or a 10 s Retry-After costs no real time and times are exact.
Each test is one row of the table in docs/routing.md.
"""

from __future__ import annotations

import itertools
import logging

import httpx2
import pytest
import trio

from tests.e2e.conftest import config, setup, sse_events, target, trail
from trio_gateway.runtime import supervisor
from trio_gateway.runtime.target import TargetActor
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import is_health_check

GUIDE_HEALTH = {"passive": True, "threshold": 3, "interval": 60}
MODEL = "gpt-4o-mini"
LONG = 900.0  # virtual seconds each test may take


def primary_and_fallback(fakes, **kw):
    """The issue's setup: the primary at priority 1, the fallback at priority 2."""
    return config(
        [
            target(fakes[0], priority=1, default_model=MODEL, models=[MODEL]),
            target(fakes[1], priority=2, default_model=MODEL, models=[MODEL]),
        ],
        health=GUIDE_HEALTH,
        **kw,
    )


def posts(fake):
    """What a fake got from clients, not the gateway's own health checks."""
    return [r for r in fake.requests if r.method == "POST" and not is_health_check(r)]


async def timed(s, **kw) -> tuple[httpx2.Response, float]:
    started = trio.current_time()
    response = await s.chat(**kw)
    return response, trio.current_time() - started


# --- 1. slow failures eject ---------------------------------------------------------------


async def test_a_hung_primary_costs_threshold_first_byte_budgets_then_is_out(autojump_clock):
    async with setup([{"faults": [Fault.hang()]}, {}], primary_and_fallback, timeout=LONG) as s:
        primary_id, fallback_id = s.target_ids()
        for _ in range(3):
            response, took = await timed(s)
            assert response.status_code == 200
            assert trail(response) == [(primary_id, "first_byte_timeout"), (fallback_id, "200")]
            assert 30.0 <= took < 30.5  # one first-byte budget (the default), then the fallback
        for _ in range(10):
            response, took = await timed(s)
            assert trail(response) == [(fallback_id, "200")] and took < 0.5  # fallback speed
        assert len(posts(s.fakes[0])) == 3
        health = (await s.health())[primary_id]
        assert health["state"] in ("ejected", "half_open") and health["ejections"] == 1
        assert "3 failures in a row" in health["transitions"][0]["reason"]


# --- 2. a whole answer that stalls fails over -----------------------------------------------


async def test_a_whole_answer_that_stalls_after_its_headers_fails_over(autojump_clock):
    async with setup(
        [{"faults": [Fault.hang_after_headers()]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        response, took = await timed(s)
        assert response.status_code == 200
        assert [o for _, o in trail(response)] == ["body_timeout", "200"]
        assert 10.0 <= took < 10.5  # the default body budget, not the 120 s deadline
        assert response.json()["choices"][0]["message"]["content"].startswith("Hello from")


# --- 3. rate limits are not sickness -----------------------------------------------------------


async def test_a_429_with_retry_after_parks_the_target_exactly_that_long(autojump_clock):
    async with setup(
        [{"faults": [Fault.rate_limit(retry_after=10)]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        primary_id = s.target_ids()[0]
        for _ in range(35):  # a request a second
            assert (await s.chat()).status_code == 200
            await trio.sleep(1.0)
        calls = [r.time for r in posts(s.fakes[0])]
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert len(calls) == 4 and all(10.0 <= gap <= 11.0 for gap in gaps)  # back within 1 s
        health = (await s.health())[primary_id]
        assert health["ejections"] == 0 and health["consecutive_failures"] == 0
        assert health["state"] in ("parked", "healthy")
        assert any("Retry-After 10 s" in t["reason"] for t in health["transitions"])


async def test_a_429_without_retry_after_backs_off_briefly(autojump_clock):
    async with setup(
        [{"faults": [Fault.error(429, times=1)]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        first = await s.chat()
        assert [o for _, o in trail(first)] == ["429", "200"]
        assert (await s.chat()).headers["x-selected-target"] == s.target_ids()[1]  # parked
        await trio.sleep(1.0)
        assert (await s.chat()).headers["x-selected-target"] == s.target_ids()[0]  # back


# --- 4. recovery is prompt and cheap ------------------------------------------------------------


async def test_a_flapping_primary_costs_at_most_threshold_plus_one_calls_per_outage(autojump_clock):
    async with setup(
        [{"faults": [Fault.flap(down=10, up=10)]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        primary_id = s.target_ids()[0]
        served_by_primary_while_up = up_requests = 0
        started = trio.current_time()
        while trio.current_time() - started < 100:
            response = await s.chat()
            assert response.status_code == 200  # every failure failed over, invisibly
            phase = (trio.current_time() - started) % 20
            if phase >= 10:
                up_requests += 1
                served_by_primary_while_up += response.headers["x-selected-target"] == primary_id
            await trio.sleep(0.5)
        failed = [r for r in posts(s.fakes[0]) if r.status == 503]
        per_outage: dict[int, int] = {}
        for r in failed:
            per_outage[int((r.time - started) // 20)] = (
                per_outage.get(int((r.time - started) // 20), 0) + 1
            )
        assert max(per_outage.values()) <= 3 + 1
        # Back within one ejection time (5 s) of each recovery: most of each up period.
        assert served_by_primary_while_up >= 0.6 * up_requests


# --- 5. never refuse while something could serve ----------------------------------------------


async def test_when_every_target_is_out_the_soonest_back_is_tried_not_refused(autojump_clock):
    async with setup(
        [
            {"faults": [Fault.rate_limit(retry_after=30, times=1)]},
            {"faults": [Fault.rate_limit(retry_after=60, times=1)]},
        ],
        primary_and_fallback,
        timeout=LONG,
    ) as s:
        primary_id = s.target_ids()[0]
        first = await s.chat()  # both answer 429: both parked, the last 429 relayed
        assert first.status_code == 429
        assert [o for _, o in trail(first)] == ["429", "429"]
        second = await s.chat()  # both still parked: tried anyway, the soonest back first
        assert second.status_code == 200
        assert trail(second) == [(primary_id, "200")]
        assert second.headers["x-selected-target"] == primary_id
        assert len(posts(s.fakes[1])) == 1


async def test_the_last_target_in_rotation_is_never_ejected(autojump_clock):
    async with setup(
        [{"faults": [Fault.error(503)]}, {"faults": [Fault.error(503)]}],
        primary_and_fallback,
        timeout=LONG,
    ) as s:
        primary_id, fallback_id = s.target_ids()
        for _ in range(5):
            response = await s.chat()
            assert response.status_code == 503  # every target tried, the last error relayed
            assert {t for t, _ in trail(response)} == {primary_id, fallback_id}
        health = await s.health()
        states = sorted(health[t]["state"] for t in (primary_id, fallback_id))
        assert states[1] == "healthy" and states[0] in ("ejected", "half_open")
        kept = next(h for h in health.values() if h["state"] == "healthy")
        assert "too many targets of its upstream are out" in kept["reason"]


async def test_a_503_without_any_attempt_only_when_no_target_serves_the_model(autojump_clock):
    async with setup(
        [{}],
        lambda f: config([target(f[0], models=["gpt-4o"])], health=GUIDE_HEALTH),
        timeout=LONG,
    ) as s:
        response = await s.chat(model="claude-3-haiku")  # no target lists it, none has a default
        assert response.status_code == 503
        assert "x-gateway-attempts" not in response.headers
        assert not s.fakes[0].requests


# --- credentials and errors of the model ---------------------------------------------------------


async def test_a_provider_refusing_the_gateways_credential_fails_over_and_counts(autojump_clock):
    async with setup([{"faults": [Fault.error(401)]}, {}], primary_and_fallback, timeout=LONG) as s:
        response = await s.chat()
        assert response.status_code == 200
        assert [o for _, o in trail(response)] == ["401", "200"]
        assert (await s.health())[s.target_ids()[0]]["consecutive_failures"] == 1


async def test_a_refused_credential_with_nothing_else_is_a_502_of_ours(autojump_clock):
    body = {
        "error": {
            "message": "Incorrect API key provided: sk-fa****-0",
            "type": "invalid_request_error",
        }
    }
    async with setup(
        [{"faults": [Fault.error(401, body=body)]}],
        lambda f: config([target(f[0], default_model=MODEL)], health=GUIDE_HEALTH),
        timeout=LONG,
    ) as s:
        response = await s.chat()
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert "rejected the gateway's credential" in message
        assert "sk-fa" not in response.text  # the provider's words about its key stay out


async def test_an_error_of_the_model_fails_over_and_is_relayed_when_nothing_else_serves(
    autojump_clock,
):
    context = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    async with setup(
        [{"faults": [Fault.error(400, body=context)]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        response = await s.chat()
        assert response.status_code == 200
        assert [o for _, o in trail(response)] == ["400", "200"]
        assert (await s.health())[s.target_ids()[0]]["consecutive_failures"] == 0  # no penalty
        s.fakes[1].set_faults(Fault.error(400, body=context))
        response = await s.chat()
        assert response.status_code == 400 and response.json() == context


async def test_a_content_filter_refusal_is_relayed_at_once(autojump_clock):
    refusal = {
        "error": {
            "message": "The response was filtered due to the prompt triggering content management policy.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "content_filter",
        }
    }
    async with setup(
        [{"faults": [Fault.error(400, body=refusal)]}, {}], primary_and_fallback, timeout=LONG
    ) as s:
        response = await s.chat()
        assert response.status_code == 400 and response.json() == refusal
        assert not posts(s.fakes[1])


# --- 7. streams judged as the client would -----------------------------------------------------


@pytest.mark.parametrize("client", ["openai", "anthropic"])
async def test_a_translated_stream_with_its_finish_reason_is_ended_properly(autojump_clock, client):
    def cross(fakes):
        provider = "anthropic" if client == "openai" else "openai"
        model = "claude-3-5-sonnet-20241022" if provider == "anthropic" else MODEL
        return config([target(fakes[0], provider, default_model=model)], health=GUIDE_HEALTH)

    async with setup([{"faults": [Fault.no_terminator()]}], cross, timeout=LONG) as s:
        if client == "openai":
            response = await s.chat(model=None, stream=True)
            assert sse_events(response.text)[-1] == (None, "[DONE]")
        else:
            response = await s.messages(model=MODEL, stream=True)
            assert sse_events(response.text)[-1][0] == "message_stop"
        assert not any(e == "error" or "error" in d for e, d in sse_events(response.text))


# --- restarts ---------------------------------------------------------------------------------------


async def test_an_actor_waiting_to_restart_is_not_eligible(autojump_clock, monkeypatch, caplog):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_S", 60.0)
    crash = trio.Event()
    original = TargetActor._probe_loop

    async def crashing_probe_loop(self, scope):
        if self.target.priority == 1 and not crash.is_set():
            await crash.wait()
            raise RuntimeError("boom")
        await original(self, scope)

    monkeypatch.setattr(TargetActor, "_probe_loop", crashing_probe_loop)
    caplog.set_level(logging.ERROR)
    async with setup([{}, {}], primary_and_fallback, timeout=LONG) as s:
        primary_id, fallback_id = s.target_ids()
        crash.set()
        await trio.sleep(1.0)
        response, took = await timed(s)
        assert trail(response) == [(fallback_id, "200")] and took < 0.5  # not queued to the dead
        await trio.sleep(60.0)
        assert (await s.chat()).headers["x-selected-target"] == primary_id  # restarted


async def test_the_restart_backoff_starts_over_after_a_healthy_run(autojump_clock, monkeypatch):
    starts: list[float] = []
    crashes: list[float] = []
    crash = [trio.Event()]
    original = TargetActor.run

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        if self.target.priority != 1:
            return await original(self, task_status=task_status)
        starts.append(trio.current_time())
        await crash[0].wait()
        crash[0] = trio.Event()
        crashes.append(trio.current_time())
        raise RuntimeError("boom")

    monkeypatch.setattr(TargetActor, "run", run)
    async with setup([{}, {}], primary_and_fallback, timeout=LONG):
        for ran in (1.0, 1.0, 1.0, 30.0):  # three short runs, then a long one
            await trio.sleep(ran)
            crash[0].set()
            await trio.lowlevel.checkpoint()
        await trio.sleep(1.0)
    backoffs = [
        round(start - crashed, 3) for crashed, start in zip(crashes, starts[1:], strict=True)
    ]
    assert backoffs == [0.1, 0.2, 0.4, 0.1]  # doubling while it keeps crashing; over after 30 s


@pytest.mark.parametrize("request_checks", [True, False])
async def test_a_target_whose_model_list_answers_but_completions_hang_stays_out(
    autojump_clock, request_checks
):
    health = {**GUIDE_HEALTH, "request_checks": request_checks}
    async with setup(
        [{"faults": [Fault.slow_first_token(45)]}, {}],
        lambda f: config(
            [
                target(f[0], priority=1, default_model=MODEL, models=[MODEL]),
                target(f[1], priority=2, default_model=MODEL, models=[MODEL]),
            ],
            health=health,
        ),
        timeout=LONG,
    ) as s:
        for _ in range(3):
            await s.chat(stream=True)
        for _ in range(40):
            await s.chat(stream=True)
            await trio.sleep(2.0)
        calls = posts(s.fakes[0])
        checks = [r for r in s.fakes[0].requests if is_health_check(r)]
    assert checks[0].method == "GET" and checks[0].path == "/v1/models"
    if request_checks:
        assert len(calls) == 3  # ejected, and no client request ever reaches it again
        real = [r for r in checks if r.method == "POST"]
        assert real and all(r.json["stream"] is True and r.json["model"] == MODEL for r in real)
        assert real[0].json["max_completion_tokens"] == 1
    else:
        assert len(calls) > 3  # the model list alone lets it back, and a client pays
