"""The proxy over real sockets: auth, routing, balancing, headers, streaming."""

from __future__ import annotations

import json
from collections import Counter

import httpx2
import trio

from tests.e2e.conftest import KEY, config, setup, sse_events, target, trail


def two_openai(fakes, algorithm="round-robin", weights=(50, 50), **kw):
    return config(
        [
            target(f, weight=w, default_model="gpt-4o-mini", models=["gpt-4o-mini", "gpt-4"])
            for f, w in zip(fakes, weights, strict=True)
        ],
        algorithm=algorithm,
        **kw,
    )


async def test_non_streaming_answer_with_selection_headers():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        raw = b'{ "model" : "gpt-4",  "messages": [{"role": "user", "content": "Hello"}] }'
        response = await s.client.post("/v1/chat/completions", content=raw)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "chat.completion"
        assert "Hello" in body["choices"][0]["message"]["content"]
        assert response.headers["x-selected-provider"] == "openai"
        assert response.headers["x-selected-model"] == "gpt-4"
        assert response.headers["x-selected-target"] == s.target_ids()[0]
        assert len(response.headers["x-request-id"]) >= 16
        assert trail(response) == [(s.target_ids()[0], "200")]
        assert s.fakes[0].requests[-1].body == raw  # the client's bytes, untouched


async def test_gateway_key_never_reaches_the_provider():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        assert (await s.chat()).status_code == 200
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as client:
            bearer = await client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
                headers={"Authorization": f"Bearer {KEY}"},
            )
        assert bearer.status_code == 200
        for request in s.fakes[0].requests:
            assert KEY not in json.dumps(request.to_json())
            assert request.header("authorization") == "Bearer sk-fake-0"
            assert request.header("x-api-key") is None


async def test_authentication_and_routing_errors_in_the_client_dialect():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        payload = {"model": "gpt-4o-mini", "messages": []}
        async with httpx2.AsyncClient(base_url=s.gateway.proxy_url) as anonymous:
            missing = await anonymous.post("/v1/chat/completions", json=payload)
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        assert missing.headers["x-request-id"]
        wrong = await s.client.post("/v1/messages", json=payload, headers={"X-Api-Key": "tgk_nope"})
        assert wrong.status_code == 401
        assert wrong.json()["type"] == "error"
        assert wrong.json()["error"]["type"] == "authentication_error"
        no_rule = await s.client.post("/v2/chat/completions", json=payload)
        assert no_rule.status_code == 404
        assert no_rule.json()["error"]["type"] == "not_found_error"
        bad_json = await s.client.post("/v1/chat/completions", content=b"{nope")
        assert bad_json.status_code == 400
        assert bad_json.json()["error"]["type"] == "invalid_request_error"
        assert s.fakes[0].requests == []


async def test_revoked_and_expired_keys_are_refused_at_once():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        base = f"/gateways/{s.gateway_id}/keys"
        key = (await s.admin.post(base, json={"name": "temp"})).json()
        headers = {"X-Api-Key": key["key"]}
        assert (
            await s.client.post(
                "/v1/chat/completions",
                json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
                headers=headers,
            )
        ).status_code == 200
        await s.admin.put(f"{base}/{key['id']}", json={"active": False})
        off = await s.client.post(
            "/v1/chat/completions", json={"model": "gpt-4", "messages": []}, headers=headers
        )
        assert off.status_code == 401
        await s.admin.put(
            f"{base}/{key['id']}", json={"active": True, "expires_at": "2000-01-01T00:00:00Z"}
        )
        expired = await s.client.post(
            "/v1/chat/completions", json={"model": "gpt-4", "messages": []}, headers=headers
        )
        assert expired.status_code == 401
        await s.admin.delete(f"{base}/{key['id']}")
        gone = await s.client.post(
            "/v1/chat/completions", json={"model": "gpt-4", "messages": []}, headers=headers
        )
        assert gone.status_code == 401


async def test_models_lists_what_the_key_reaches():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        openai_style = (await s.client.get("/v1/models")).json()
        assert [m["id"] for m in openai_style["data"]] == ["gpt-4", "gpt-4o-mini"]
        anthropic_style = (
            await s.client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
        ).json()
        assert anthropic_style["data"][0]["type"] == "model"


async def test_round_robin_splits_1000_requests_500_500_and_the_fakes_agree():
    async with setup([{}, {}], two_openai) as s:
        seen = Counter()
        for _ in range(1000):
            response = await s.chat()
            assert response.status_code == 200
            seen[response.headers["x-selected-target"]] += 1
        ids = s.target_ids()
        assert seen == {ids[0]: 500, ids[1]: 500}
        assert [len(f.requests) for f in s.fakes] == [500, 500]


async def test_weighted_70_30_is_exact_in_every_window_of_10():
    async with setup([{}, {}], lambda fakes: two_openai(fakes, "weighted", (70, 30))) as s:
        ids = s.target_ids()
        picks = []
        for _ in range(100):
            response = await s.chat()
            picks.append(response.headers["x-selected-target"])
            # X-Selected-Target names the fake that really answered.
            fake = s.fakes[ids.index(picks[-1])]
            assert fake.requests[-1].header("authorization") == f"Bearer {fake.spec.api_key}"
        for start in range(91):
            assert Counter(picks[start : start + 10]) == {ids[0]: 7, ids[1]: 3}
        assert [len(f.requests) for f in s.fakes] == [70, 30]


async def test_streaming_passes_events_through_with_headers():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        async with s.client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "Hi there"}],
            },
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-selected-provider"] == "openai"
            assert response.headers["x-selected-model"] == "gpt-4o-mini"
            assert trail(response)[0][1] == "200"
            chunks = [c async for c in response.aiter_bytes()]
        events = sse_events(b"".join(chunks).decode())
        assert events[-1] == (None, "[DONE]")
        text = "".join(
            json.loads(d)["choices"][0]["delta"].get("content") or ""
            for _, d in events[:-1]
            if json.loads(d)["choices"]
        )
        assert "Hi there" in text


async def test_model_is_substituted_in_the_forwarded_body():
    async with setup(
        [{}],
        lambda fakes: config(
            [target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"])]
        ),
    ) as s:
        response = await s.chat(model=None)
        assert response.status_code == 200
        assert response.headers["x-selected-model"] == "gpt-4o-mini"
        assert s.fakes[0].requests[-1].json["model"] == "gpt-4o-mini"
        fallback = await s.chat(model="gpt-9")
        assert fallback.status_code == 200
        assert fallback.headers["x-selected-model"] == "gpt-4o-mini"
        assert fallback.headers["x-gateway-model-fallback"] == "gpt-9 -> gpt-4o-mini"


async def test_unknown_model_is_a_400_when_the_upstream_rejects_them():
    async with setup(
        [{}],
        lambda fakes: config(
            [target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"])],
            upstream={"model_fallback": "reject"},
        ),
    ) as s:
        response = await s.chat(model="gpt-9")
        assert response.status_code == 400
        assert "gpt-9" in response.json()["error"]["message"]
        assert s.fakes[0].requests == []


async def test_editing_adding_and_removing_targets_under_load_loses_nothing(autojump_clock):
    # Each answer takes 50 ms, so every edit lands while requests are in flight.
    slow = {"faults": [Fault.latency(0.05)]}
    async with setup([slow, slow, slow], lambda fakes: two_openai(fakes[:2])) as s:
        results: list[int] = []
        done = trio.Event()

        async def client_loop() -> None:
            while not done.is_set():
                response = await s.chat()
                results.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(client_loop)
            path = f"/gateways/{s.gateway_id}/upstreams/{s.upstream_id}"
            upstream = (await s.admin.get(path)).json()
            third = target(s.fakes[2], default_model="gpt-4o-mini", models=["gpt-4o-mini"])
            steps = [
                {"algorithm": "weighted"},
                {"targets": [*upstream["targets"], third]},  # add
                {"targets": [upstream["targets"][1], third]},  # remove the first
                {"targets": [dict(upstream["targets"][1], weight=7), third]},  # edit
                {
                    "targets": [
                        dict(
                            third,
                            base_url=s.fakes[0].url,
                            credentials={
                                "header_name": "Authorization",
                                "header_value": "Bearer sk-fake-0",
                            },
                        )
                    ]
                },
            ]
            for step in steps:
                await trio.sleep(0.2)
                response = await s.admin.put(path, json=step)
                assert response.status_code == 200, response.text
            await trio.sleep(0.3)
            done.set()
        assert len(results) > 50
        assert set(results) == {200}
        assert sum(len(f.requests) for f in s.fakes) == len(results)


async def test_client_disconnect_mid_stream_cancels_the_upstream_request():
    from trio_gateway.testing.fake import Fault, Outcome

    async with setup(
        [{"faults": [Fault.stall_stream(30, after_chunks=2)]}],
        lambda fakes: two_openai(fakes, weights=(1,)),
    ) as s:
        async with s.client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "stream": True,
                "messages": [{"role": "user", "content": "one two three four"}],
            },
        ) as response:
            assert response.status_code == 200
            async for _ in response.aiter_bytes():
                break  # the first event arrived; now the client goes away
        upstream = s.fakes[0].requests[-1]
        with trio.fail_after(5):
            assert await upstream.wait_finished() is Outcome.DISCONNECTED


async def test_a_target_that_is_out_is_still_tried_when_nothing_else_can_serve():
    async with setup(
        [{}],
        lambda fakes: config(
            [target(fakes[0], default_model="gpt-4o-mini", models=["gpt-4o-mini"])],
            health={"passive": True, "threshold": 1, "interval": 30},
        ),
    ) as s:
        s.fakes[0].set_faults(Fault.error(503))
        first = await s.chat()
        assert first.status_code == 503  # the provider's own answer, relayed
        assert trail(first) == [(s.target_ids()[0], "503")]
        assert (await s.health())[s.target_ids()[0]]["state"] == "ejected"
        second = await s.chat()  # ejected, but the only target: tried, not refused
        assert second.status_code == 503
        assert trail(second) == [(s.target_ids()[0], "503")]
        s.fakes[0].clear_faults()
        third = await s.chat()
        assert third.status_code == 200  # and its success restores it at once
        assert (await s.health())[s.target_ids()[0]]["state"] == "healthy"


from tests.e2e.conftest import Fault  # noqa: E402


async def test_streams_give_their_upstream_connection_back_to_the_pool():
    async with setup([{}], lambda fakes: two_openai(fakes, weights=(1,))) as s:
        for _ in range(10):
            response = await s.chat(stream=True)
            assert sse_events(response.text)[-1] == (None, "[DONE]")
        # One connection reused, not one per stream (a regression cost ~0.8 ms per stream).
        assert s.fakes[0].statistics().connections_total == 1
