"""Provider behaviour no fake scripts, over a scripted transport (the client side is real).

``httpx2.MockTransport`` plays the provider byte by byte; the gateway and the
client talk over real sockets as everywhere else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx2
import trio

from tests.e2e.conftest import KEY, config, sse_events, trail
from trio_gateway.testing.harness import open_gateway

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def targets(n: int = 2, provider: str = "openai", model: str = "gpt-4o-mini") -> list[dict]:
    return [
        {
            "provider": provider,
            "base_url": f"http://provider-{i}.test",
            "priority": i + 1,
            "default_model": model,
            "credentials": {"header_value": "k"},
        }
        for i in range(n)
    ]


def sse(*events: bytes, after: Exception | None = None) -> Callable[[], AsyncIterator[bytes]]:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield event
        if after is not None:
            raise after

    return body


async def call(cfg: dict, handler, *, path="/v1/chat/completions", body=None, stream=True):
    async with open_gateway(cfg, transport=httpx2.MockTransport(handler)) as gw:
        async with httpx2.AsyncClient(
            base_url=gw.proxy_url, headers={"X-Api-Key": KEY}, timeout=30
        ) as client:
            payload = body or {"messages": [{"role": "user", "content": "x"}], "stream": stream}
            response = await client.post(path, json=payload)
        upstream = next(iter(gw.catalog.snapshot.upstreams))
        health = {s.id: s for s in gw.runtime.upstream_health(upstream)}
        return response, health, [t.id for t in gw.catalog.snapshot.upstreams[upstream].targets]


async def test_a_provider_that_closes_badly_after_its_terminator_served_a_complete_stream():
    def handler(request: httpx2.Request) -> httpx2.Response:
        body = sse(TOKEN, DONE, after=httpx2.ReadError("connection reset"))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    with trio.fail_after(30):
        response, health, ids = await call(config(targets(1)), handler)
    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")  # one ending, the provider's
    assert all("error" not in data for _, data in events)
    assert health[ids[0]].health.consecutive_failures == 0


async def test_a_provider_that_lingers_after_its_terminator_does_not_hold_the_client(
    autojump_clock,
):
    async def body() -> AsyncIterator[bytes]:
        yield TOKEN + DONE
        await trio.sleep(3600)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    with trio.fail_after(15):
        response, health, ids = await call(
            config(targets(1), service={"idle_timeout": 60}), handler
        )
    assert sse_events(response.text)[-1] == (None, "[DONE]")
    assert health[ids[0]].health.consecutive_failures == 0


async def test_an_event_of_the_wrong_shape_before_the_first_token_fails_over():
    calls = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.url.host)
        if request.url.host == "provider-0.test":
            return httpx2.Response(
                200,
                headers={"content-type": "text/event-stream"},
                content=sse(b'data: {"choices": 5}\n\n', DONE)(),
            )
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(TOKEN, DONE)()
        )

    with trio.fail_after(30):
        response, health, ids = await call(config(targets(2)), handler)
    assert [o for _, o in trail(response)] == ["protocol_error", "200"]
    assert sse_events(response.text)[-1] == (None, "[DONE]")
    assert health[ids[0]].health.consecutive_failures == 1


async def test_a_translated_stream_that_breaks_its_protocol_before_content_fails_over():
    bad = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c","content":[],"usage":{"input_tokens":1,"output_tokens":0}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}\n\n'
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "provider-0.test":
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, content=sse(bad)()
            )
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(TOKEN, DONE)()
        )

    cfg = config([targets(1, "anthropic", "claude-3-5-sonnet-20241022")[0], targets(2)[1]])
    with trio.fail_after(30):
        response, health, ids = await call(cfg, handler)
    assert trail(response)[0][1] == "protocol_error"
    assert response.headers["x-selected-provider"] == "openai"
    assert sse_events(response.text)[-1] == (None, "[DONE]")
    assert health[ids[0]].health.consecutive_failures == 1


async def test_the_relayed_error_names_the_target_that_sent_it():
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "provider-0.test":
            return httpx2.Response(503, json={"error": {"message": "down", "type": "server_error"}})
        raise httpx2.ConnectError("refused")

    with trio.fail_after(30):
        response, _, ids = await call(config(targets(2)), handler, stream=False)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "down"
    assert response.headers["x-selected-target"] == ids[0]  # the body is the first target's
    assert [o for _, o in trail(response)] == ["503", "connect_error"]


async def test_time_spent_in_the_gateways_queue_is_not_the_targets_fault(autojump_clock):
    async def slow(request: httpx2.Request) -> httpx2.Response:
        async def body():  # headers at once, the body after 1.5 s: the slot is held that long
            await trio.sleep(1.5)
            yield b'{"id": "x", "object": "chat.completion", "choices": []}'

        return httpx2.Response(200, content=body(), headers={"content-type": "application/json"})

    cfg = config([dict(targets(1)[0], max_in_flight=1)], service={"first_byte_timeout": 1.0})
    async with open_gateway(cfg, transport=httpx2.MockTransport(slow)) as gw:
        async with httpx2.AsyncClient(base_url=gw.proxy_url, headers={"X-Api-Key": KEY}) as client:
            body = {"messages": [{"role": "user", "content": "x"}]}
            responses: list[httpx2.Response] = []

            async def one() -> None:
                responses.append(await client.post("/v1/chat/completions", json=body))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)
                await trio.sleep(0.05)
                nursery.start_soon(one)
        upstream = next(iter(gw.catalog.snapshot.upstreams))
        stats = gw.runtime.upstream_health(upstream)[0]
    queued = next(r for r in responses if r.status_code != 200)
    assert sorted(r.status_code for r in responses) == [200, 503]
    # The second waited in the gateway's queue past its first-byte budget...
    assert [o for _, o in trail(queued)] == ["queue_timeout"]
    assert stats.health.consecutive_failures == 0  # ...which the target is not blamed for


async def test_a_wrong_key_is_refused_even_on_a_public_rule():
    cfg = config(targets(1))
    cfg["gateways"][0]["rules"][0]["public"] = True

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"choices": []})

    async with open_gateway(cfg, transport=httpx2.MockTransport(handler)) as gw:
        gateway_id = next(iter(gw.catalog.snapshot.gateways))
        async with httpx2.AsyncClient(base_url=gw.proxy_url) as client:
            body = {"messages": [], "model": "gpt-4o-mini"}
            wrong = await client.post(
                "/v1/chat/completions",
                json=body,
                headers={"X-Api-Key": "tgk_wrong", "X-Gateway-Id": gateway_id},
            )
            anonymous = await client.post(
                "/v1/chat/completions", json=body, headers={"X-Gateway-Id": gateway_id}
            )
    assert wrong.status_code == 401 and anonymous.status_code == 200
    assert json.loads(wrong.text)["error"]["type"] == "authentication_error"
