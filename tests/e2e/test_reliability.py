"""Failover, tiers, health and time budgets, over real sockets.

Tests that wait run in virtual time (``autojump_clock``): the gateway, the fakes
and the client share the test's Trio loop, so a 30 s budget costs no real time and
timing assertions are exact.
"""

from __future__ import annotations

import json

import httpx2
import trio

from tests.e2e.conftest import KEY, config, setup, sse_events, target, trail
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import open_gateway


def posts(fake):
    """The requests a fake got from clients (not the gateway's own health checks)."""
    return [r for r in fake.requests if r.method == "POST"]


def tiers(fakes, health=None, **kw):
    """fakes[0] at priority 1, fakes[1] at priority 2."""
    return config(
        [
            target(fakes[0], priority=1, default_model="gpt-4o-mini", models=["gpt-4o-mini"]),
            target(fakes[1], priority=2, default_model="gpt-4o-mini", models=["gpt-4o-mini"]),
        ],
        health=health or {"passive": True, "threshold": 3, "interval": 60},
        **kw,
    )


async def test_backup_tier_idle_while_primary_serves_then_takes_over_with_no_client_errors():
    async with setup([{}, {}], tiers) as s:
        primary, backup = s.fakes
        for _ in range(20):
            assert (await s.chat()).status_code == 200
        assert (len(primary.requests), len(backup.requests)) == (20, 0)

        primary.set_faults(Fault.error(503))
        statuses = [(await s.chat()).status_code for _ in range(30)]
        assert set(statuses) == {200}  # every failure failed over, invisibly
        assert len(primary.requests) == 20 + 3  # threshold failures, then ejected
        assert len(backup.requests) == 30
        health = await s.health()
        assert health[s.target_ids()[0]]["state"] == "ejected"


async def test_an_ejected_target_is_checked_by_the_gateway_not_by_a_client(autojump_clock):
    async with setup([{}, {}], tiers) as s:
        primary = s.fakes[0]
        actor = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        primary.set_faults(Fault.error(503))
        for _ in range(3):
            assert (await s.chat()).status_code == 200
        assert actor.health.state.value == "ejected"
        ejected_until = actor.health.until

        # While out: no client request reaches it, however many come.
        while trio.current_time() < ejected_until + 30:
            assert (await s.chat()).status_code == 200
            await trio.sleep(0.5)
        assert len(posts(primary)) == 3
        checks = [r for r in primary.requests if r.method == "GET"]
        assert checks and checks[0].path == "/v1/models"  # the gateway's own, cheap request
        assert checks[0].time >= ejected_until  # not before the out-period is over
        health = (await s.health())[s.target_ids()[0]]
        assert health["state"] in ("ejected", "half_open")  # between checks, or in one
        assert health["probes"] in (len(checks), len(checks) + 1)
        assert health["ejections"] == 1  # failed checks do not eject again, nor double

        # It recovers: the next check restores it, on probation, within one ejection time.
        primary.clear_faults()
        recovered_at = trio.current_time()
        while actor.health.state.value != "healthy":  # noqa: ASYNC110 (virtual time)
            await trio.sleep(0.1)
        assert trio.current_time() - recovered_at <= 5.0 + 0.2
        assert actor.health.probation
        assert (await s.chat()).headers["x-selected-target"] == s.target_ids()[0]
        assert not actor.health.probation  # a real success ends it


async def test_a_hung_target_costs_one_first_byte_budget():
    async with setup(
        [{"faults": [Fault.hang()]}, {}], lambda f: tiers(f, service={"first_byte_timeout": 1.0})
    ) as s:
        started = trio.current_time()
        response = await s.chat()
        elapsed = trio.current_time() - started
        assert response.status_code == 200
        assert response.headers["x-selected-target"] == s.target_ids()[1]
        assert [o for _, o in trail(response)] == ["first_byte_timeout", "200"]
        assert 1.0 <= elapsed < 8
        # The abandoned attempt's connection was closed: the fake sees the client go.
        with trio.fail_after(5):
            assert (await s.fakes[0].requests[0].wait_finished()).value == "disconnected"


async def test_a_silent_stream_is_failed_over_before_its_first_byte():
    async with setup(
        [{"faults": [Fault.hang_after_headers()]}, {}],
        lambda f: tiers(f, service={"first_byte_timeout": 1.0}),
    ) as s:
        response = await s.chat(stream=True)
        assert response.status_code == 200
        assert [o for _, o in trail(response)] == ["first_byte_timeout", "200"]
        assert sse_events(response.text)[-1] == (None, "[DONE]")


async def test_the_request_deadline_bounds_every_attempt_together():
    async with setup(
        [{"faults": [Fault.hang()]}, {"faults": [Fault.hang()]}],
        lambda f: tiers(f, service={"first_byte_timeout": 0.6, "request_timeout": 1.0}),
    ) as s:
        started = trio.current_time()
        response = await s.chat()
        elapsed = trio.current_time() - started
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "upstream_timeout"
        assert [o for _, o in trail(response)] == ["first_byte_timeout", "deadline"]
        assert 1.0 <= elapsed < 5
        # The deadline, not the backup, cut the second attempt: only the primary is blamed.
        health = await s.health()
        assert [health[t]["consecutive_failures"] for t in s.target_ids()] == [1, 0]


async def test_a_400_is_relayed_unchanged_with_no_failover_and_no_penalty():
    body = {
        "error": {
            "message": "bad tool schema",
            "type": "invalid_request_error",
            "param": "tools",
            "code": None,
        }
    }
    async with setup([{"faults": [Fault.error(400, body=body)]}, {}], tiers) as s:
        for _ in range(5):
            response = await s.chat()
            assert response.status_code == 400
            assert response.json() == body
        assert len(s.fakes[1].requests) == 0
        health = await s.health()
        primary = health[s.target_ids()[0]]
        assert primary["state"] == "healthy" and primary["consecutive_failures"] == 0


async def test_connection_reset_and_429_fail_over():
    async with setup(
        [{"faults": [Fault.reset(times=1), Fault.rate_limit(retry_after=7, times=1)]}, {}], tiers
    ) as s:
        first = await s.chat()
        second = await s.chat()
        assert (first.status_code, second.status_code) == (200, 200)
        assert trail(first)[0][1] in ("connect_error", "protocol_error", "read_error")
        assert [o for _, o in trail(second)] == ["429", "200"]


async def test_every_target_failing_relays_the_last_upstream_error():
    async with setup(
        [{"faults": [Fault.error(502)]}, {"faults": [Fault.overloaded()]}], tiers
    ) as s:
        response = await s.chat()
        assert response.status_code == 529
        assert [o for _, o in trail(response)] == ["502", "529"]


async def test_stream_cut_after_n_chunks_ends_with_an_openai_error_event():
    async with setup([{"faults": [Fault.cut_stream(after_chunks=3)]}, {}], tiers) as s:
        response = await s.chat(
            stream=True, messages=[{"role": "user", "content": "one two three four five"}]
        )
        assert response.status_code == 200
        assert response.headers["x-selected-target"] == s.target_ids()[0]
        events = sse_events(response.text)
        assert len(events) == 4
        error = json.loads(events[-1][1])["error"]
        assert error["type"] == "server_error" and "broke" in error["message"]
        assert (None, "[DONE]") not in events
        assert len(s.fakes[1].requests) == 0  # no failover after the first byte


async def test_stream_cut_after_n_chunks_ends_with_an_anthropic_error_event():
    def anthropic_tiers(fakes):
        return config(
            [
                target(
                    fakes[0], "anthropic", priority=1, default_model="claude-3-5-sonnet-20241022"
                ),
                target(
                    fakes[1], "anthropic", priority=2, default_model="claude-3-5-sonnet-20241022"
                ),
            ]
        )

    async with setup([{"faults": [Fault.cut_stream(after_chunks=5)]}, {}], anthropic_tiers) as s:
        response = await s.messages(
            stream=True, messages=[{"role": "user", "content": "one two three"}]
        )
        assert response.status_code == 200
        events = sse_events(response.text)
        assert [e for e, _ in events[:5]] == [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
        ]
        assert events[-1][0] == "error"
        assert json.loads(events[-1][1])["type"] == "error"
        assert "message_stop" not in [e for e, _ in events]
        assert len(s.fakes[1].requests) == 0  # the first token had gone out: no failover


async def test_a_stream_cut_before_its_first_token_fails_over_even_after_metadata():
    async with setup(
        [{"faults": [Fault.cut_stream(after_chunks=3)]}, {}],
        lambda f: config(
            [
                target(f[0], "anthropic", priority=1, default_model="claude-3-5-sonnet-20241022"),
                target(f[1], "anthropic", priority=2, default_model="claude-3-5-sonnet-20241022"),
            ]
        ),
    ) as s:
        response = await s.messages(stream=True)
        events = sse_events(response.text)
        assert [e for e, _ in events].count("message_start") == 1  # the held metadata was dropped
        assert events[-1][0] == "message_stop"
        assert response.headers["x-selected-target"] == s.target_ids()[1]


async def test_a_stream_with_its_finish_reason_that_closes_cleanly_is_complete():
    async with setup([{"faults": [Fault.no_terminator()]}, {}], tiers) as s:
        response = await s.chat(stream=True)
        events = sse_events(response.text)
        assert events[-1] == (None, "[DONE]")  # ended properly for the client
        assert json.loads(events[-2][1])["choices"][0]["finish_reason"] == "stop"
        assert not any("error" in json.loads(d) for _, d in events[:-1])
        health = await s.health()
        assert health[s.target_ids()[0]]["consecutive_failures"] == 0


async def test_a_stream_that_closes_without_a_finish_reason_ends_with_an_error_event():
    def chunk(text: str) -> bytes:
        delta = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        return b"data: " + json.dumps(delta).encode() + b"\n\n"

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, content=chunk("Hello") + chunk(" there"), headers={"content-type": SSE}
        )

    cfg = config([target_at("http://provider.test", default_model="gpt-4o-mini")])
    async with open_gateway(cfg, transport=httpx2.MockTransport(handler)) as gw:
        async with httpx2.AsyncClient(base_url=gw.proxy_url, headers={"X-Api-Key": KEY}) as c:
            response = await c.post("/v1/chat/completions", json=STREAM_BODY)
            stats = gw.runtime.upstream_health(next(iter(gw.catalog.snapshot.upstreams)))[0]
    events = sse_events(response.text)
    assert [json.loads(d)["choices"][0]["delta"]["content"] for _, d in events[:2]] == [
        "Hello",
        " there",
    ]
    assert "before it was complete" in json.loads(events[-1][1])["error"]["message"]
    assert (None, "[DONE]") not in events
    assert stats.health.consecutive_failures == 1


async def test_a_stream_broken_before_its_first_event_fails_over():
    async with setup([{"faults": [Fault.cut_stream(after_chunks=0)]}, {}], tiers) as s:
        response = await s.chat(stream=True)
        assert response.status_code == 200
        assert response.headers["x-selected-target"] == s.target_ids()[1]
        assert sse_events(response.text)[-1] == (None, "[DONE]")


async def test_idle_stream_is_ended_with_an_error_event():
    async with setup(
        [{"faults": [Fault.stall_stream(30, after_chunks=2)]}, {}],
        lambda f: tiers(f, service={"idle_timeout": 0.5}),
    ) as s:
        started = trio.current_time()
        response = await s.chat(
            stream=True, messages=[{"role": "user", "content": "one two three four"}]
        )
        assert trio.current_time() - started < 10
        events = sse_events(response.text)
        assert (
            "no content from the provider for 0.5 s"
            in json.loads(events[-1][1])["error"]["message"]
        )
        with trio.fail_after(5):
            assert (await s.fakes[0].requests[0].wait_finished()).value == "disconnected"


async def test_passive_false_never_ejects():
    async with setup(
        [{"faults": [Fault.error(500)]}, {}],
        lambda f: tiers(f, {"passive": False, "threshold": 1, "interval": 60}),
    ) as s:
        for _ in range(5):
            assert (await s.chat()).status_code == 200
        assert len(s.fakes[0].requests) == 5


async def test_active_probes_eject_a_silent_failure_and_readmit_on_recovery(autojump_clock):
    probes = {"passive": True, "threshold": 2, "interval": 5, "active": True}
    async with setup(
        [{"faults": [Fault.error(503, path="/v1/models")]}, {}], lambda f: tiers(f, probes)
    ) as s:
        primary = s.fakes[0]
        actor = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        while actor.health.state.value != "ejected":  # noqa: ASYNC110 (virtual time)
            await trio.sleep(0.5)
        probes_seen = [r for r in primary.requests if r.path == "/v1/models"]
        assert len(probes_seen) == 2 and probes_seen[1].time - probes_seen[0].time == 5.0
        assert probes_seen[0].header("authorization") == "Bearer sk-fake-0"
        assert not posts(primary)  # no traffic needed
        primary.clear_faults()
        while actor.health.state.value != "healthy":  # noqa: ASYNC110 (virtual time)
            await trio.sleep(0.5)
        response = await s.chat()
        assert response.headers["x-selected-target"] == s.target_ids()[0]


async def test_a_stream_whose_first_event_is_an_error_fails_over():
    async with setup([{"faults": [Fault.error_event(529, after_chunks=0)]}, {}], tiers) as s:
        response = await s.chat(stream=True)
        assert response.status_code == 200
        assert response.headers["x-selected-target"] == s.target_ids()[1]
        assert [o for _, o in trail(response)] == ["stream_error", "200"]
        assert sse_events(response.text)[-1] == (None, "[DONE]")


async def test_a_slow_first_token_is_failed_over_within_the_budget():
    async with setup(
        [{"faults": [Fault.slow_first_token(5)]}, {}],
        lambda f: tiers(f, service={"first_byte_timeout": 1.0}),
    ) as s:
        response = await s.chat(stream=True)
        assert [o for _, o in trail(response)] == ["first_byte_timeout", "200"]


async def test_a_malformed_event_after_content_is_relayed_as_the_provider_sent_it():
    async with setup([{"faults": [Fault.malformed_event(after_chunks=3)]}, {}], tiers) as s:
        response = await s.chat(
            stream=True, messages=[{"role": "user", "content": "one two three four"}]
        )
        events = sse_events(response.text)
        malformed = [d for _, d in events if d != "[DONE]" and not d.endswith("}")]
        assert len(malformed) == 1  # passed on, as a client of the provider would see it
        assert events[-1] == (None, "[DONE]")  # and the whole answer after it
        assert response.headers["x-selected-target"] == s.target_ids()[0]


async def test_a_malformed_event_in_a_translated_stream_is_skipped():
    def anthropic_client_openai_provider(fakes):
        return config(
            [target(fakes[0], priority=1, default_model="gpt-4o-mini", models=["gpt-4o-mini"])]
        )

    async with setup(
        [{"faults": [Fault.malformed_event(after_chunks=3)]}], anthropic_client_openai_provider
    ) as s:
        response = await s.messages(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "one two"}]
        )
        events = sse_events(response.text)
        for _, data in events:
            json.loads(data)  # nothing unreadable reached the client
        assert events[-1][0] == "message_stop"
        text = "".join(
            json.loads(d)["delta"]["text"]
            for e, d in events
            if e == "content_block_delta" and json.loads(d)["delta"]["type"] == "text_delta"
        )
        assert text == "Hello from gpt-4o-mini! You said: one two"


async def test_a_malformed_first_event_fails_over():
    async with setup([{"faults": [Fault.malformed_event(after_chunks=0)]}, {}], tiers) as s:
        response = await s.chat(stream=True)
        assert [o for _, o in trail(response)] == ["protocol_error", "200"]
        assert sse_events(response.text)[-1] == (None, "[DONE]")


async def test_a_client_leaving_a_whole_answer_cancels_the_upstream_request():
    async with setup([{"faults": [Fault.hang()]}, {}], tiers) as s:
        with trio.move_on_after(0.5):
            await s.chat()
        with trio.fail_after(5):
            assert (await s.fakes[0].requests[0].wait_finished()).value == "disconnected"
        health = await s.health()
        assert health[s.target_ids()[0]]["consecutive_failures"] == 0  # not the target's fault


async def test_an_answer_that_does_not_translate_fails_over():
    def cross(fakes):
        return config(
            [
                target(
                    fakes[0], "anthropic", priority=1, default_model="claude-3-5-sonnet-20241022"
                ),
                target(fakes[1], "openai", priority=2, default_model="gpt-4o-mini"),
            ]
        )

    async with setup([{"faults": [Fault.error(200, body="this is not JSON")]}, {}], cross) as s:
        response = await s.chat()
        assert response.status_code == 200
        assert [o for _, o in trail(response)] == ["protocol_error", "200"]
        health = await s.health()
        assert health[s.target_ids()[0]]["consecutive_failures"] == 1


async def test_errors_never_carry_a_secret():
    secret = "sk-live-do-not-leak-0123456789"

    def closed_port(fakes):
        dead = target(fakes[0], default_model="gpt-4o-mini")
        dead["base_url"] = "http://127.0.0.1:1"
        dead["credentials"]["header_value"] = f"Bearer {secret}"
        return config([dead])

    async with setup([{}], closed_port) as s:
        response = await s.chat()
        assert response.status_code == 502
        assert "cannot connect to the provider" in response.text
        assert secret not in response.text and secret not in json.dumps(await s.health())


async def test_rotating_a_credential_keeps_health_and_adopts_the_new_policy():
    async with setup([{"api_key": None}], lambda f: tiers(f * 2)) as s:  # takes any key
        path = f"/gateways/{s.gateway_id}/upstreams/{s.upstream_id}"
        upstream = (await s.admin.get(path)).json()
        before = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        before.health.failed(trio.current_time(), before.health.admit(trio.current_time()), "x")
        rotated = dict(
            upstream["targets"][0],
            credentials={"header_name": "Authorization", "header_value": "Bearer sk-rotated-1"},
        )
        response = await s.admin.put(
            path,
            json={
                "targets": [rotated, upstream["targets"][1]],
                "health_checks": {"passive": False, "threshold": 50, "interval": 5},
            },
        )
        assert response.status_code == 200
        after = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        assert after is not before and before.retired  # a new actor for the new credential
        assert after.health is before.health  # ...with the target's health
        assert after.health.consecutive_failures == 1
        assert (after.health.policy.passive, after.health.policy.threshold) == (False, 50)
        assert (await s.chat()).status_code == 200
        assert s.fakes[0].requests[-1].header("authorization") == "Bearer sk-rotated-1"


SSE = "text/event-stream"
STREAM_BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "x"}],
}


def target_at(url, **fields):
    return {
        "provider": "openai",
        "base_url": url,
        "credentials": {"header_value": "sk-test"},
        **fields,
    }
