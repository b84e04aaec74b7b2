"""``POST /api/v1/gateways/{id}/explain``: what the proxy would do, without calling anyone."""

from __future__ import annotations

import pytest
import trio

from tests.e2e.conftest import KEY, config, setup, target, trail
from trio_gateway.testing.fake import Fault
from trio_gateway.testing.harness import is_health_check

MODEL = "gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}


async def explain(s, body=CHAT, *, path="/v1/chat/completions", headers=None, **extra):
    response = await s.admin.post(
        f"/gateways/{s.gateway_id}/explain",
        json={
            "method": "POST",
            "path": path,
            "headers": {"X-Api-Key": KEY} if headers is None else headers,
            "body": body,
            **extra,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def client_posts(fakes):
    return sum(1 for f in fakes for r in f.requests if not is_health_check(r))


@pytest.mark.parametrize(
    "algorithm", ["round-robin", "weighted", "least-connections", "random", "lowest-latency"]
)
async def test_next_target_is_the_next_requests_selected_target(algorithm):
    def three(fakes):
        return config(
            [
                target(f, default_model=MODEL, weight=w)
                for f, w in zip(fakes, (5, 3, 1), strict=True)
            ],
            algorithm=algorithm,
        )

    async with setup([{}, {}, {}], three) as s:
        seen = set()
        for _ in range(12):
            calls = client_posts(s.fakes)
            told = await explain(s)
            assert client_posts(s.fakes) == calls  # explain calls no provider
            response = await s.chat()
            assert response.status_code == 200
            assert told["next_target"] == response.headers["x-selected-target"]
            assert told["model_sent"] == response.headers["x-selected-model"]
            seen.add(told["next_target"])
        if algorithm in ("round-robin", "weighted"):
            assert len(seen) == 3  # explain did not hold a rotation in place


async def test_every_target_is_explained_with_why_it_is_not_eligible():
    def upstream(fakes):
        return config(
            [
                target(fakes[0], priority=1, default_model=MODEL, models=[MODEL]),
                target(fakes[1], priority=1, default_model="gpt-4o", models=["gpt-4o"]),
                target(fakes[2], priority=2, default_model=MODEL, models=[MODEL]),
            ],
            health={"passive": True, "threshold": 1, "interval": 60},
        )

    async with setup([{}, {}, {}], upstream) as s:
        first, other_model, backup = s.target_ids()
        told = await explain(s)
        verdicts = {t["id"]: t for t in told["targets"]}
        assert told["next_target"] == first
        assert verdicts[first]["eligible"] and verdicts[first]["reason"] == "eligible"
        assert not verdicts[other_model]["eligible"]
        assert verdicts[other_model]["reason"] == f"model: it does not serve {MODEL!r}"
        assert not verdicts[backup]["eligible"]
        assert verdicts[backup]["reason"] == "tier: priority 2; tier 1 serves first"
        assert told["gateway"]["name"] == "e2e" and told["key"]["name"] == "k"
        assert told["rule"]["name"] == "v1" and told["service"]["name"] == "s"
        assert told["upstream"]["name"] == "u" and told["upstream"]["algorithm"] == "round-robin"
        assert told["request"]["model"] == MODEL and told["request"]["stream"] is False

        # The first target fails once: ejected (threshold 1); the backup is next.
        s.fakes[0].set_faults([Fault.error(503)])
        response = await s.chat()
        assert response.headers["x-selected-target"] == backup
        told = await explain(s)
        verdicts = {t["id"]: t for t in told["targets"]}
        assert told["next_target"] == backup == (await s.chat()).headers["x-selected-target"]
        assert not verdicts[first]["eligible"] and verdicts[first]["state"] == "ejected"
        assert verdicts[first]["reason"].startswith("health: ejected (")
        assert verdicts[first]["until"] is not None
        assert verdicts[backup]["eligible"]


@pytest.mark.parametrize(
    ("case", "request_fields"),
    [
        ("no key", {"headers": {}}),
        ("a wrong key", {"headers": {"X-Api-Key": "tgk_wrong"}}),
        ("no route", {"path": "/v2/chat/completions"}),
        ("not JSON", {"body": "{not json"}),
        ("a bad stream flag", {"body": {**CHAT, "stream": "yes"}}),
        ("wrong method", {"method": "GET"}),
        ("a model nobody serves", {"body": {**CHAT, "model": "nope"}}),
    ],
)
async def test_a_refused_request_is_explained_with_the_error_the_proxy_gives(case, request_fields):
    def rejecting(fakes):
        return config(
            [target(fakes[0], default_model=MODEL, models=[MODEL])],
            upstream={"model_fallback": "reject"},
        )

    async with setup([{}], rejecting) as s:
        fields = {"method": "POST", "path": "/v1/chat/completions", "body": CHAT}
        fields["headers"] = {"X-Api-Key": KEY}
        fields.update(request_fields)
        told = await s.admin.post(f"/gateways/{s.gateway_id}/explain", json=fields)
        assert told.status_code == 200, told.text
        refused = told.json()["refused"]
        body = fields["body"]
        proxied = await s.client.request(
            fields["method"],
            fields["path"],
            headers={"X-Api-Key": "", **fields["headers"]},
            content=body.encode() if isinstance(body, str) else None,
            json=None if isinstance(body, str) else body,
        )
        assert proxied.status_code >= 400, case
        assert refused["status"] == proxied.status_code
        assert refused["body"] == proxied.json()
        assert client_posts(s.fakes) == 0


async def test_explain_is_checked_like_any_admin_call():
    async with setup([{}], lambda f: config([target(f[0], default_model=MODEL)])) as s:
        wrong = await s.admin.post(f"/gateways/{s.gateway_id}/explain", json={"headers": []})
        assert wrong.status_code == 422
        problems = {p["loc"] for p in wrong.json()["error"]["details"]}
        assert problems == {"path", "headers"}
        missing = await s.admin.post("/gateways/nope/explain", json={"path": "/v1/messages"})
        assert missing.status_code == 404


async def test_a_key_of_another_gateway_is_not_explained_here():
    def two_gateways(fakes):
        first = config([target(fakes[0], default_model=MODEL)])
        second = config([target(fakes[0], default_model=MODEL)])["gateways"][0]
        second = {**second, "name": "other", "api_keys": [{"name": "k2", "key": KEY + "2"}]}
        first["gateways"].append(second)
        return first

    async with setup([{}], two_gateways) as s:
        gateways = {g.name: g.id for g in s.gateway.catalog.snapshot.gateways.values()}
        response = await s.admin.post(
            f"/gateways/{gateways['e2e']}/explain",
            json={
                "path": "/v1/chat/completions",
                "headers": {"X-Api-Key": KEY + "2"},
                "body": CHAT,
            },
        )
        assert response.status_code == 422
        assert "belongs to gateway 'other'" in response.text


async def test_a_target_whose_queue_is_full_is_skipped_as_the_request_would_skip_it(autojump_clock):
    def busy(fakes):
        return config(
            [
                target(fakes[0], priority=1, default_model=MODEL, max_in_flight=1),
                target(fakes[1], priority=2, default_model=MODEL),
            ],
            service={"first_byte_timeout": 120, "request_timeout": 300},
        )

    async with setup([{"faults": [Fault.hang()]}, {}], busy) as s:
        stuck, backup = s.target_ids()
        async with trio.open_nursery() as nursery:
            for _ in range(2):  # one in flight, one in its queue of one: full
                nursery.start_soon(s.chat)
                await trio.sleep(0.2)
            told = await explain(s)
            assert told["skipped"] == [
                {"target": stuck, "outcome": "overloaded", "reason": "the target's queue is full"}
            ]
            verdicts = {t["id"]: t for t in told["targets"]}
            assert verdicts[stuck]["reason"] == "capacity: its queue is full"
            assert told["next_target"] == backup
            response = await s.chat()
            assert response.headers["x-selected-target"] == backup
            assert trail(response) == [(stuck, "overloaded"), (backup, "200")]
            nursery.cancel_scope.cancel()
