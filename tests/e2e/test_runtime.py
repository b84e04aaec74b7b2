"""The runtime's own guarantees: overload, crash recovery, public rules, provider adapters."""

from __future__ import annotations

import logging

import httpx2
import pytest
import trio

from tests.e2e.conftest import KEY, config, setup, target, trail
from trio_gateway.runtime.target import TargetActor
from trio_gateway.testing.fake import Fault


def one_target(fakes, **fields):
    return config([target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"], **fields)])


async def test_a_full_target_answers_429_with_retry_after(autojump_clock):
    async with setup(
        [{"faults": [Fault.latency(1.0)]}], lambda f: one_target(f, max_in_flight=1)
    ) as s:
        results: list[httpx2.Response] = []

        async def call() -> None:
            results.append(await s.chat())

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
                await trio.sleep(0.05)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 200, 429]  # one running, one queued, one refused
        refused = next(r for r in results if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert [o for _, o in trail(refused)] == ["overloaded"]
        assert len(s.fakes[0].requests) == 2


async def test_overflow_goes_to_the_next_target(autojump_clock):
    async with setup(
        [{"faults": [Fault.latency(1.0)]}, {}],
        lambda f: config(
            [
                target(f[0], default_model="gpt-4o-mini", max_in_flight=1),
                target(f[1], default_model="gpt-4o-mini", priority=2),
            ]
        ),
    ) as s:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(s.chat)
                await trio.sleep(0.05)
        assert (len(s.fakes[0].requests), len(s.fakes[1].requests)) == (2, 2)


async def test_a_crashed_actor_is_restarted_and_its_attempts_in_flight_go_on(
    monkeypatch, caplog, autojump_clock
):
    crash = trio.Event()
    original = TargetActor._probe_loop
    crashed: list[str] = []

    async def crashing_probe_loop(self, scope):
        if not crashed and self.target.priority == 1:
            crashed.append(self.target.id)
            await crash.wait()
            raise RuntimeError("boom")
        await original(self, scope)

    monkeypatch.setattr(TargetActor, "_probe_loop", crashing_probe_loop)
    caplog.set_level(logging.ERROR)
    async with setup(
        [{"faults": [Fault.latency(2.0, times=1)]}, {}],
        lambda f: config(
            [
                target(f[0], default_model="gpt-4o-mini", priority=1),
                target(f[1], default_model="gpt-4o-mini", priority=2),
            ]
        ),
    ) as s:
        async with trio.open_nursery() as nursery:
            results: list[httpx2.Response] = []

            async def call() -> None:
                results.append(await s.chat())

            nursery.start_soon(call)
            await s.fakes[0].wait_requests(1)  # in flight on the primary
            crash.set()
        response = results[0]
        # The attempt runs in the request's own task: the actor's crash does not touch it.
        assert response.status_code == 200
        assert trail(response) == [(s.target_ids()[0], "200")]
        assert "target actor crashed; restarting" in caplog.text
        with trio.fail_after(10):
            while (await s.chat()).headers["x-selected-target"] != s.target_ids()[0]:  # noqa: ASYNC110
                await trio.sleep(0.05)


async def test_public_rules_need_no_key_and_name_their_gateway():
    def public(fakes):
        cfg = one_target(fakes)
        gateway = cfg["gateways"][0]
        gateway["subdomain"] = "pub"
        gateway["rules"] = [
            {"name": "open", "path": "/v1/chat", "service": "s", "public": True},
            {"name": "closed", "path": "/v1/messages", "service": "s"},
        ]
        return cfg

    async with setup([{}], public) as s:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            by_header = await anonymous.post(
                "/v1/chat/completions", json=body, headers={"X-Gateway-Id": s.gateway_id}
            )
            assert by_header.status_code == 200
            by_host = await anonymous.post(
                "/v1/chat/completions", json=body, headers={"Host": "pub.example.com"}
            )
            assert by_host.status_code == 200
            closed = await anonymous.post(
                "/v1/messages", json=body, headers={"X-Gateway-Id": s.gateway_id}
            )
            assert closed.status_code == 401
            unknown = await anonymous.post(
                "/v1/chat/completions", json=body, headers={"X-Gateway-Id": "nope"}
            )
            assert unknown.status_code == 401


async def test_azure_openai_deployment_url_and_api_key():
    def azure(fakes):
        return config(
            [
                {
                    "provider": "azure-openai",
                    "base_url": fakes[0].url,
                    "default_model": "gpt-4o-mini",
                    "credentials": {"header_name": "api-key", "header_value": "sk-fake-0"},
                }
            ]
        )

    async with setup([{}], azure) as s:
        response = await s.chat()
        assert response.status_code == 200, response.text
        sent = s.fakes[0].requests[-1]
        assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
        assert "api-version=" in sent.query
        assert sent.header("api-key") == "sk-fake-0"
        assert sent.header("authorization") is None


async def test_inactive_gateway_refuses_traffic():
    async with setup([{}], one_target) as s:
        await s.admin.put(f"/gateways/{s.gateway_id}", json={"status": "inactive"})
        response = await s.chat()
        assert response.status_code == 403


@pytest.mark.parametrize("size", [33 << 20])
async def test_a_body_over_the_proxy_limit_is_413(size):
    async with setup([{}], one_target) as s:
        response = await s.client.post("/v1/chat/completions", content=b"x" * size)
        assert response.status_code == 413
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert s.fakes[0].requests == []


__all__ = ["KEY"]


async def test_credentials_without_a_header_name_use_the_providers_own():
    def bare(fakes):
        return config(
            [
                {
                    "provider": "openai",
                    "base_url": fakes[0].url,
                    "default_model": "gpt-4o-mini",
                    "models": ["gpt-4o-mini"],
                    "credentials": {"header_value": "sk-fake-0"},
                },
                {
                    "provider": "anthropic",
                    "base_url": fakes[1].url,
                    "priority": 2,
                    "default_model": "claude-3-5-sonnet-20241022",
                    "credentials": {"header_value": "sk-fake-1"},
                },
            ]
        )

    async with setup([{}, {}], bare) as s:
        assert (await s.chat()).status_code == 200
        assert s.fakes[0].requests[-1].header("authorization") == "Bearer sk-fake-0"
        assert (await s.messages()).status_code == 200
        assert s.fakes[1].requests[-1].header("x-api-key") == "sk-fake-1"
