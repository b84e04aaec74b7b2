"""Fault injection on live traffic, over real sockets: the gateway, fake providers, a client.

Tests that wait run in virtual time (``autojump_clock``): a 30 s budget costs nothing
and elapsed times are exact.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
import yaml

from tests.e2e.conftest import KEY, config, setup, sse_events, target
from trio_gateway.config.catalog import Catalog, Snapshot
from trio_gateway.config.file import parse
from trio_gateway.config.transfer import export, restore
from trio_gateway.store.memory import MemoryStore
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import is_health_check, open_gateway

HANG = {"X-Gateway-Fault": "hang"}


def injecting(setting: dict[str, Any] | None = None, **kw: Any) -> Any:
    """fakes[0] (primary, priority 1) and fakes[1] (backup, priority 2), injection enabled."""

    def make(fakes: list[Any]) -> dict[str, Any]:
        made = config([target(fake, priority=i + 1) for i, fake in enumerate(fakes)], **kw)
        if setting is not None:
            made["gateways"][0]["fault_injection"] = setting
        return made

    return make


def attempts(response: httpx2.Response) -> list[dict[str, str]]:
    """Each attempt of ``X-Gateway-Attempts`` as a dict: ``target``, ``outcome``, ``fault``..."""
    found = []
    for item in filter(
        None, (p.strip() for p in response.headers["x-gateway-attempts"].split(","))
    ):
        target_id, *fields = item.split(";")
        found.append({"target": target_id, **dict(f.split("=", 1) for f in fields)})
    return found


def client_posts(fake: Any) -> list[Any]:
    return [r for r in fake.requests if not is_health_check(r)]


async def test_a_header_selected_hang_fails_over_without_calling_the_provider(autojump_clock):
    service = {"first_byte_timeout": 5}
    async with setup([{}, {}], injecting({"enabled": True}, service=service)) as s:
        primary, backup = s.target_ids()
        started = trio.current_time()
        response = await s.client.post("/v1/chat/completions", json=_chat("hi"), headers=HANG)
        assert response.status_code == 200, response.text
        assert trio.current_time() - started == pytest.approx(5, abs=0.1)  # one first-byte budget
        assert response.headers["x-selected-target"] == backup
        trail = attempts(response)
        assert [(a["target"], a["outcome"], a.get("fault")) for a in trail] == [
            (primary, "first_byte_timeout", "hang"),
            (backup, "200", None),
        ]
        assert response.headers["x-gateway-fault"] == f"hang; target={primary}"
        # The fault answered instead of the provider; the header never left the gateway.
        assert s.fakes[0].requests == []
        (sent,) = s.fakes[1].requests
        assert sent.header("x-gateway-fault") is None
        # The gateway's health saw a real failure.
        assert (await s.health())[primary]["consecutive_failures"] == 1


async def test_a_named_fault_picks_its_target_or_every_attempt(autojump_clock):
    async with setup([{}, {}], injecting({"enabled": True})) as s:
        primary, backup = s.target_ids()
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        # On the backup only: the primary answers, nothing is injected.
        response = await s.client.post(
            "/v1/chat/completions", json=body, headers={"X-Gateway-Fault": f"503; target={backup}"}
        )
        assert response.status_code == 200
        assert "x-gateway-fault" not in response.headers
        assert len(s.fakes[0].requests) == 1
        # On every attempt: the client sees the injected 503, in its own dialect.
        response = await s.client.post(
            "/v1/chat/completions", json=body, headers={"X-Gateway-Fault": "503; attempts=all"}
        )
        assert response.status_code == 503
        assert "injected by the gateway's fault injection" in response.json()["error"]["message"]
        assert [(a["outcome"], a["fault"]) for a in attempts(response)] == [
            ("503", "error"),
            ("503", "error"),
        ]
        assert response.headers["x-gateway-fault"] == (
            f"error; target={primary}, error; target={backup}"
        )
        assert (len(s.fakes[0].requests), len(s.fakes[1].requests)) == (1, 0)
        # A rate limit with its Retry-After, to an Anthropic client.
        response = await s.client.post(
            "/v1/messages",
            json={
                "model": "claude-3-5-haiku-20241022",
                "max_tokens": 9,
                "messages": body["messages"],
            },
            headers={"X-Gateway-Fault": "rate_limit; retry_after=7; attempts=all"},
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["type"] == "rate_limit_error"


async def test_a_percentage_fault_fires_on_its_share_of_attempts(autojump_clock):
    health = {"passive": True, "threshold": 1000, "interval": 60}
    async with setup([{}, {}], injecting(health=health)) as s:
        primary, backup = s.target_ids()
        fault = {"kind": "error", "status": 503, "probability": 0.5, "targets": [primary]}
        put = await s.admin.put(
            f"/gateways/{s.gateway_id}/faults",
            json={"enabled": True, "faults": [fault], "seed": 1},
        )
        assert put.status_code == 200, put.text
        responses = [await s.chat() for _ in range(40)]
        assert {r.status_code for r in responses} == {200}
        faulted = [r for r in responses if "x-gateway-fault" in r.headers]
        assert 10 <= len(faulted) <= 30
        for response in faulted:
            assert response.headers["x-gateway-fault"] == f"error; target={primary}"
            assert response.headers["x-selected-target"] == backup
        # The provider was called for exactly the attempts the fault let through.
        assert len(s.fakes[0].requests) == 40 - len(faulted)
        stats = (await s.admin.get(f"/gateways/{s.gateway_id}/faults")).json()["statistics"]
        assert stats["faults"] == [{"matched": 40, "fired": len(faulted)}]


async def test_a_key_selected_fault_hits_that_key_only(autojump_clock):
    async with setup([{}], injecting()) as s:
        created = await s.admin.post(f"/gateways/{s.gateway_id}/keys", json={"name": "ci"})
        ci_key, ci_id = created.json()["key"], created.json()["id"]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

        async def status(key: str) -> int:
            response = await s.client.post(
                "/v1/chat/completions", json=body, headers={"X-Api-Key": key}
            )
            return response.status_code

        setting = {"enabled": True, "faults": [{"kind": "error", "status": 503, "keys": ["ci"]}]}
        assert (await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=setting)).is_success
        assert (await status(ci_key), await status(KEY)) == (503, 200)
        by_id = {"faults": [{"kind": "error", "status": 500, "keys": [ci_id]}]}
        assert (await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=by_id)).is_success
        assert (await status(ci_key), await status(KEY)) == (500, 200)
        assert len(s.fakes[0].requests) == 2  # only the other key's requests reached it


async def test_the_kill_switch_ends_faults_in_flight_and_stops_new_ones(autojump_clock):
    service = {"first_byte_timeout": 60, "body_timeout": 60, "request_timeout": 300}
    setting = {"enabled": True, "faults": [{"kind": "hang", "path": "/v1/chat/completions"}]}
    async with setup([{}], injecting(setting, service=service), timeout=600) as s:
        results: dict[str, tuple[httpx2.Response, float]] = {}
        started = trio.current_time()

        async def send(name: str, path: str, body: Any, headers: Any = None) -> None:
            response = await s.client.post(path, json=body, headers=headers)
            results[name] = (response, trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "configured", "/v1/chat/completions", _chat("a"))
            nursery.start_soon(
                send,
                "after_headers",
                "/v1/messages",
                _messages("b"),
                {"X-Gateway-Fault": "hang_after_headers"},
            )
            await trio.sleep(5)
            assert results == {}  # both hang, far inside their budgets
            off = await s.admin.delete(f"/gateways/{s.gateway_id}/faults")
            assert off.status_code == 200
            assert off.json()["enabled"] is False and off.json()["active"] is False

        # At once, each carried on to the provider and got its real answer.
        response, elapsed = results["configured"]
        assert response.status_code == 200 and elapsed == pytest.approx(5, abs=0.1)
        assert response.json()["choices"][0]["message"]["content"].endswith("You said: a")
        assert attempts(response)[0]["fault"] == "hang"
        response, elapsed = results["after_headers"]
        assert response.status_code == 200 and elapsed == pytest.approx(5, abs=0.1)
        assert response.json()["content"][0]["text"].endswith("You said: b")
        # Afterwards: clean, and a named fault is refused.
        response = await s.client.post("/v1/chat/completions", json=_chat("c"))
        assert response.status_code == 200
        assert "x-gateway-fault" not in response.headers
        assert "fault" not in attempts(response)[0]
        refused = await s.client.post("/v1/chat/completions", json=_chat("d"), headers=HANG)
        assert refused.status_code == 403
        assert len(s.fakes[0].requests) == 3


async def test_one_call_switches_every_gateway_off_and_ends_a_stall(autojump_clock):
    service = {"first_byte_timeout": 60, "idle_timeout": 120}
    setting = {
        "enabled": True,
        "faults": [
            {"kind": "stall_stream", "seconds": 100, "after_chunks": 3},
            {"kind": "cut_stream", "after_chunks": 5},
        ],
    }
    async with setup([{}], injecting(setting, service=service), timeout=600) as s:
        other = await s.admin.post("/gateways", json={"name": "other"})
        other_id = other.json()["id"]
        on = await s.admin.put(f"/gateways/{other_id}/faults", json={"enabled": True})
        assert on.json()["active"] is True
        listed = (await s.admin.get("/faults")).json()["gateways"]
        assert sorted(g["name"] for g in listed) == ["e2e", "other"]

        chunks: list[tuple[float, bytes]] = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                request = s.client.build_request(
                    "POST",
                    "/v1/chat/completions",
                    json={**_chat("one two three four five"), "stream": True},
                )
                response = await s.client.send(request, stream=True)
                async for chunk in response.aiter_bytes():
                    chunks.append((trio.current_time(), chunk))

            nursery.start_soon(read)
            await trio.sleep(10)
            stalled_at = chunks[-1][0]
            off = await s.admin.delete("/faults")
            assert sorted(g["name"] for g in off.json()["switched_off"]) == ["e2e", "other"]
        # The stall ended when the switch was thrown, not 100 s later, and the cut that
        # was to come never came: nothing was lost.
        assert chunks[-1][0] - stalled_at < 11
        text = b"".join(c for _, c in chunks).decode()
        events = sse_events(text)
        assert events[-1] == (None, "[DONE]")
        content = "".join(
            json.loads(d)["choices"][0]["delta"].get("content") or ""
            for _, d in events[:-1]
            if json.loads(d).get("choices")
        )
        assert content.endswith("You said: one two three four five")
        assert (await s.admin.get("/faults")).json()["gateways"] == []


async def test_a_gateway_without_the_setting_refuses_a_named_fault():
    async with setup([{}, {}], injecting()) as s:
        response = await s.client.post("/v1/chat/completions", json=_chat("a"), headers=HANG)
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["type"] == "permission_error"
        assert "fault injection is not enabled for gateway 'e2e'" in error["message"]
        response = await s.client.post("/v1/messages", json=_messages("a"), headers=HANG)
        assert response.status_code == 403
        assert response.json()["type"] == "error"  # Anthropic's error shape
        assert response.json()["error"]["type"] == "permission_error"
        response = await s.client.get("/v1/models", headers=HANG)
        assert response.status_code == 403
        assert [f.requests for f in s.fakes] == [[], []]

        # Enabled, but without header faults: refused all the same.
        setting = {"enabled": True, "header_faults": False}
        assert (await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=setting)).is_success
        response = await s.client.post("/v1/chat/completions", json=_chat("a"), headers=HANG)
        assert response.status_code == 403
        assert "'header_faults': false" in response.json()["error"]["message"]

        # Taken: a fault that cannot be is a client error, in the client's dialect.
        await s.admin.put(f"/gateways/{s.gateway_id}/faults", json={"header_faults": True})
        for value, says in [
            ("explode", "'explode': must be one of"),
            ("cut_stream", "send it with a streaming request"),
            ("hang; target=nope", "no target of this request's upstream has this id"),
        ]:
            response = await s.client.post(
                "/v1/chat/completions", json=_chat("a"), headers={"X-Gateway-Fault": value}
            )
            assert response.status_code == 400, value
            assert says in response.json()["error"]["message"]
        assert [f.requests for f in s.fakes] == [[], []]


async def test_injected_failures_eject_the_target_and_its_checks_fail_too(autojump_clock):
    health = {"passive": True, "threshold": 3, "interval": 60, "ejection_time": 5}
    async with setup([{}, {}], injecting(health=health), timeout=600) as s:
        primary, _ = s.target_ids()
        setting = {
            "enabled": True,
            "faults": [{"kind": "error", "status": 503, "targets": [primary]}],
        }
        assert (await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=setting)).is_success
        for _ in range(3):
            assert (await s.chat()).status_code == 200
        assert (await s.health())[primary]["state"] == "ejected"
        await trio.sleep(60)  # several recovery checks: each met the fault
        state = (await s.health())[primary]
        assert state["state"] == "ejected" and state["probe_failures"] >= 3
        assert s.fakes[0].requests == []  # neither a client call nor a check reached it
        assert (await s.admin.delete(f"/gateways/{s.gateway_id}/faults")).is_success
        await trio.sleep(65)
        assert (await s.health())[primary]["state"] == "healthy"
        assert (await s.chat()).headers["x-selected-target"] == primary
        assert any(is_health_check(r) for r in s.fakes[0].requests)


async def test_stream_faults_bend_the_providers_real_stream(autojump_clock):
    service = {"first_byte_timeout": 5, "idle_timeout": 10}
    async with setup([{}, {}], injecting({"enabled": True}, service=service)) as s:
        primary, backup = s.target_ids()

        async def stream(fault: str, text: str = "one two three four") -> httpx2.Response:
            return await s.client.post(
                "/v1/chat/completions",
                json={**_chat(text), "stream": True},
                headers={"X-Gateway-Fault": fault},
            )

        # Cut before the first token: failed over, the client sees a whole stream.
        response = await stream("cut_stream; after_chunks=1")
        assert response.headers["x-selected-target"] == backup
        assert [(a["outcome"], a.get("fault")) for a in attempts(response)] == [
            ("read_error", "cut_stream"),
            ("200", None),
        ]
        assert sse_events(response.text)[-1] == (None, "[DONE]")
        # An error event after it: relayed, the stream ends there.
        response = await stream("error_event; after_chunks=3")
        assert response.headers["x-selected-target"] == primary
        last = json.loads(sse_events(response.text)[-1][1])
        assert "injected by the gateway's fault injection" in last["error"]["message"]
        # A first token that never comes in time: failed over, as for a real provider.
        response = await stream("slow_first_token; seconds=60")
        assert response.headers["x-selected-target"] == backup
        assert attempts(response)[0]["fault"] == "slow_first_token"


@pytest.mark.parametrize(
    ("fault", "stream", "first", "answered_by"),
    [
        ("500", False, "500", "backup"),
        ("rate_limit", False, "429", "backup"),
        ("close", False, "protocol_error", "backup"),
        ("reset", True, "read_error", "backup"),
        ("hang_after_headers", False, "body_timeout", "backup"),
        ("hang_after_headers", True, "first_byte_timeout", "backup"),
        ("malformed_event; after_chunks=0", True, "protocol_error", "backup"),
        ("error_event; after_chunks=0", True, "stream_error", "backup"),
        ("latency; seconds=3", False, "200", "primary"),
        ("no_terminator", True, "200", "primary"),
    ],
)
async def test_every_kind_acts_in_front_of_the_provider(
    autojump_clock, fault: str, stream: bool, first: str, answered_by: str
):
    service = {"first_byte_timeout": 5, "body_timeout": 5}
    async with setup([{}, {}], injecting({"enabled": True}, service=service)) as s:
        primary, backup = s.target_ids()
        started = trio.current_time()
        response = await s.client.post(
            "/v1/chat/completions",
            json={**_chat("hi"), "stream": stream},
            headers={"X-Gateway-Fault": fault},
        )
        elapsed = trio.current_time() - started
        assert response.status_code == 200, response.text
        trail = attempts(response)
        assert (trail[0]["target"], trail[0]["outcome"]) == (primary, first)
        assert trail[0]["fault"] == fault.split(";")[0].replace("500", "error")
        expected = primary if answered_by == "primary" else backup
        assert response.headers["x-selected-target"] == expected
        if stream:  # every stream the client gets is whole, whatever the provider did
            assert sse_events(response.text)[-1] == (None, "[DONE]")
        if fault.startswith("latency"):
            assert elapsed == pytest.approx(3, abs=0.1)
        # Answered by the fault: the provider never saw the attempt; bent: it did.
        bent = fault.split(";")[0] in ("malformed_event", "error_event", "no_terminator", "latency")
        assert len(s.fakes[0].requests) == (1 if bent else 0)


async def test_faults_on_every_api(autojump_clock):
    service = {"first_byte_timeout": 5}
    async with setup([{}, {}], injecting({"enabled": True}, service=service)) as s:
        primary, backup = s.target_ids()
        response = await s.client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": "hi"},
            headers=HANG,
        )
        assert response.status_code == 200, response.text
        assert [a.get("fault") for a in attempts(response)] == ["hang", None]
        response = await s.client.post(
            "/v1/responses",
            json={"model": "gpt-4o-mini", "input": "one two three", "stream": True},
            headers={"X-Gateway-Fault": "cut_stream; after_chunks=1"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-selected-target"] == backup
        assert sse_events(response.text)[-1][0] == "response.completed"
        response = await s.client.post(
            "/v1/responses",
            json={"model": "gpt-4o-mini", "input": "one two three", "stream": True},
            headers={"X-Gateway-Fault": "error_event; after_chunks=6; attempts=all"},
        )
        assert response.status_code == 200, response.text
        name, data = sse_events(response.text)[-1]
        assert "injected by the gateway's fault injection" in data, (name, data)
        # A configured fault selects by the endpoint the client called.
        setting = {"faults": [{"kind": "error", "status": 503, "path": "/v1/embeddings"}]}
        assert (await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=setting)).is_success
        assert (await s.chat()).headers.get("x-gateway-fault") is None
        embedded = await s.client.post(
            "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hi"}
        )
        assert embedded.status_code == 503
        assert primary in embedded.headers["x-gateway-fault"]


async def test_an_expired_setting_stops_by_itself(autojump_clock):
    service = {"first_byte_timeout": 120, "request_timeout": 300}
    async with setup([{}], injecting(service=service), timeout=600) as s:
        expires = datetime.now(UTC) + timedelta(seconds=30)
        setting = {"enabled": True, "faults": ["hang"], "expires_at": expires.isoformat()}
        put = await s.admin.put(f"/gateways/{s.gateway_id}/faults", json=setting)
        assert put.status_code == 200, put.text
        assert put.json()["faults"] == [{"kind": "hang"}]
        started = trio.current_time()
        response = await s.chat()
        assert response.status_code == 200
        assert trio.current_time() - started == pytest.approx(30, abs=1)
        assert (await s.admin.get(f"/gateways/{s.gateway_id}/faults")).json()["active"] is False
        assert (
            await s.client.post("/v1/chat/completions", json=_chat("a"), headers=HANG)
        ).status_code == 403


async def test_switches_change_without_restarting_the_faults(autojump_clock):
    service = {"first_byte_timeout": 60, "request_timeout": 300}
    async with setup([{}, {}], injecting(service=service), timeout=600) as s:
        url = f"/gateways/{s.gateway_id}/faults"
        soon = datetime.now(UTC) + timedelta(seconds=30)
        setting = {"enabled": True, "faults": [{"kind": "hang", "times": 1}]}
        first = await s.admin.put(url, json={**setting, "expires_at": soon.isoformat()})
        assert first.status_code == 200, first.text
        results: list[tuple[httpx2.Response, float]] = []
        started = trio.current_time()

        async def send() -> None:
            response = await s.chat()
            results.append((response, trio.current_time() - started))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(10)
            later = datetime.now(UTC) + timedelta(seconds=200)
            put = await s.admin.put(url, json={"expires_at": later.isoformat()})
            assert put.json()["since"] == first.json()["since"]
        # Extended: the hang outlived the first expiry and met its first-byte budget.
        ((response, elapsed),) = results
        assert elapsed == pytest.approx(60, abs=0.5)
        assert [a.get("fault") for a in attempts(response)] == ["hang", None]
        # Its counter went on: 'times: 1' is spent, the next request is clean.
        assert "x-gateway-fault" not in (await s.chat()).headers
        stats = (await s.admin.get(url)).json()["statistics"]
        assert stats["faults"] == [{"matched": 3, "fired": 1}]


async def test_the_admin_api_of_a_gateways_faults(caplog: pytest.LogCaptureFixture):
    caplog.set_level("INFO", "trio_gateway.runtime")
    async with setup([{}], injecting()) as s:
        url = f"/gateways/{s.gateway_id}/faults"
        shown = (await s.admin.get(url)).json()
        assert shown == {
            "enabled": False,
            "header_faults": True,
            "faults": [],
            "expires_at": None,
            "seed": None,
            "since": None,
            "active": False,
            "statistics": None,
            "warnings": [],
        }
        bad = await s.admin.put(
            url,
            json={"enabled": "yes", "faults": [{"kind": "hang", "status": 503}, {"kind": "error"}]},
        )
        assert bad.status_code == 422
        assert [d["loc"] for d in bad.json()["error"]["details"]] == [
            "enabled",
            "faults[0]",
            "faults[1]",
        ]
        good = await s.admin.put(
            url,
            json={
                "enabled": True,
                "faults": [{"kind": "error", "status": 503, "keys": ["nobody"]}],
            },
        )
        assert good.status_code == 200
        data = good.json()
        assert data["faults"] == [{"kind": "error", "status": 503, "keys": ["nobody"]}]
        assert data["active"] is True and data["since"] is not None
        (started,) = [r for r in caplog.records if r.getMessage() == "fault injection in force"]
        assert started.levelname == "WARNING"
        assert started.fields == {  # type: ignore[attr-defined]
            "gateway_id": s.gateway_id,
            "name": "e2e",
            "faults": 1,
            "header_faults": True,
            "expires_at": None,
        }
        assert data["warnings"] == [
            "faults[0].keys[0]: no API key of this gateway has the name or id 'nobody'"
        ]
        # PUT keeps what it does not name; the faults' clock keeps its start.
        again = (await s.admin.put(url, json={"header_faults": False})).json()
        assert again["faults"] == data["faults"] and again["since"] == data["since"]
        # The gateway entity carries the setting; a PUT of the gateway may set it too.
        gateway = (await s.admin.get(f"/gateways/{s.gateway_id}")).json()
        assert gateway["fault_injection"]["faults"] == data["faults"]
        put = await s.admin.put(f"/gateways/{s.gateway_id}", json={"fault_injection": None})
        assert put.json()["fault_injection"]["enabled"] is False
        assert "fault injection switched off" in caplog.messages
        assert (await s.admin.get(url)).json()["active"] is False
        null = await s.admin.put(url, content=b"null", headers={"content-type": "application/json"})
        assert null.status_code == 422  # not a kill switch by accident
        assert null.json()["error"]["details"] == [{"loc": "$", "msg": "must be a JSON object"}]
        assert (await s.admin.get("/gateways/nope/faults")).status_code == 404


async def test_the_configuration_file_round_trip(tmp_path: Path):
    async with open_fake_provider(name="fake", api_key="sk-fake") as fake:
        file = tmp_path / "gateway.yaml"
        data = config([target(fake)])
        data["gateways"][0]["fault_injection"] = {
            "enabled": True,
            "header_faults": False,
            "seed": 7,
            "faults": [{"kind": "error", "status": 502, "keys": ["k"], "probability": 0.5}],
        }
        file.write_text(yaml.safe_dump(data))
        with trio.fail_after(60):
            async with (
                open_gateway(file) as running,
                httpx2.AsyncClient(base_url=running.admin_url + "/api/v1") as admin,
            ):
                (gateway,) = running.catalog.snapshot.gateways.values()
                shown = (await admin.get(f"/gateways/{gateway.id}/faults")).json()
                assert shown["faults"] == [
                    {"kind": "error", "status": 502, "keys": ["k"], "probability": 0.5}
                ]
                assert (shown["enabled"], shown["header_faults"], shown["seed"]) == (True, False, 7)
                assert shown["active"] is True

                # Exported and imported: the same setting, its clock included.
                exported, _ = export(running.catalog.snapshot, include_secrets=True)
                catalog = Catalog(MemoryStore(), Snapshot.empty())
                await catalog.write(lambda d: restore(d, yaml.safe_load(yaml.safe_dump(exported))))
                (imported,) = catalog.snapshot.gateways.values()
                assert imported.fault_injection == gateway.fault_injection

                # The file applied again (a restart) changes nothing: windows keep counting.
                from trio_gateway.config.file import apply

                def reapply(draft: Any) -> Any:
                    return apply(draft, parse(yaml.safe_load(file.read_text()), {}))

                report = await running.catalog.write(reapply)
                assert not report.updated
                (after,) = running.catalog.snapshot.gateways.values()
                assert after.fault_injection.since == gateway.fault_injection.since

    bad = config([target(fake)])
    bad["gateways"][0]["fault_injection"] = {"faults": [{"kind": "error", "status": 700}]}
    with pytest.raises(Exception) as caught:
        parse(bad, {})
    assert "gateways[0].fault_injection.faults[0].status: must be between 200 and 599" in str(
        caught.value
    )


def _chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def _messages(text: str) -> dict[str, Any]:
    """An Anthropic-format request, for the OpenAI-format fakes (the gateway translates)."""
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
    }
