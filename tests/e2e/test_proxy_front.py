"""The proxy's ASGI front (web/proxy.py, ``ProxyApp``): what Quart used to do for it.

The proxy paths are served straight from the ASGI messages; these tests pin down
what a framework would otherwise have done: no body on a ``HEAD`` answer, a body
over the limit refused, a client that leaves mid-body or mid-answer ending its
request (and nothing sent to a provider for a body never read whole), query
strings read, and the health paths still served by the Quart app.
"""

from __future__ import annotations

import json
import logging

import trio

from tests.e2e.conftest import CHAT, KEY, UNREACHABLE, WITH_KEY, config, target
from tests.e2e.rawhttp import RawConnection, head
from tests.e2e.rawhttp import request as whole
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import open_gateway

TIME_LIMIT = 60
PROMPT = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2_000}]}
).encode()


async def test_a_head_request_gets_the_status_and_length_but_no_body(autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with open_gateway(config([UNREACHABLE])) as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(whole("GET", CHAT, headers=WITH_KEY))
            got = await conn.answer("GET")
            await conn.send(whole("HEAD", CHAT, headers=WITH_KEY))
            headed = await conn.answer("HEAD")
            assert got is not None and headed is not None
            assert got.status == headed.status == 405
            assert headed.headers["allow"] == got.headers["allow"] == "POST"
            # (The messages differ by the method's name: GET is one letter shorter.)
            assert int(headed.headers["content-length"]) == len(got.body) + 1
            assert headed.body == b""
            # The connection is still in step: the next request is answered.
            await conn.send(whole("GET", "/v1/models", headers=[("X-Api-Key", KEY)]))
            listed = await conn.answer("GET")
            assert listed is not None and listed.status == 200


async def test_a_client_leaving_mid_body_sends_nothing_to_a_provider(autojump_clock, caplog):
    with trio.fail_after(TIME_LIMIT):
        async with open_fake_provider() as fake:
            async with open_gateway(config([target(fake)])) as gw:
                conn = await RawConnection.open(gw.proxy_url)
                await conn.send(head("POST", CHAT, length=len(PROMPT), headers=WITH_KEY))
                await conn.send(PROMPT[:100])
                await trio.sleep(0.5)
                await conn.stream.aclose()
                await trio.sleep(0.5)
                assert fake.requests == []
                # Nobody to answer: not an error of the gateway's.
                assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
                # The gateway goes on serving.
                conn = await RawConnection.open(gw.proxy_url)
                await conn.send(whole("POST", CHAT, PROMPT, WITH_KEY))
                answer = await conn.answer()
                assert answer is not None and answer.status == 200
                assert len(fake.requests) == 1


async def test_a_body_over_the_limit_is_refused_in_the_clients_format(autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with open_gateway(
            config([UNREACHABLE]),
            proxy_max_body=1000,
        ) as gw:
            conn = await RawConnection.open(gw.proxy_url)
            anthropic = [("X-Api-Key", KEY), ("anthropic-version", "2023-06-01")]
            await conn.send(whole("POST", "/v1/messages", PROMPT, anthropic))
            answer = await conn.answer()
            assert answer is not None and answer.status == 413
            assert answer.json()["type"] == "error"  # Anthropic's shape
            assert answer.json()["error"]["type"] == "request_too_large"
            assert answer.headers["x-request-id"]


async def test_query_strings_are_read_and_the_health_paths_are_quarts(autojump_clock):
    listed = {"default_model": "gpt-4o-mini", "models": ["gpt-4o-mini", "gpt-4o"]}
    with trio.fail_after(TIME_LIMIT):
        async with open_gateway(config([{**UNREACHABLE, **listed}])) as gw:
            conn = await RawConnection.open(gw.proxy_url)
            anthropic = [("X-Api-Key", KEY), ("anthropic-version", "2023-06-01")]
            await conn.send(whole("GET", "/v1/models?limit=0", headers=anthropic))
            refused = await conn.answer("GET")
            assert refused is not None and refused.status == 400
            assert "limit" in refused.json()["error"]["message"]
            await conn.send(whole("GET", "/v1/models?limit=1", headers=anthropic))
            page = await conn.answer("GET")
            assert page is not None and page.status == 200
            assert len(page.json()["data"]) == 1
            await conn.send(whole("GET", "/healthz"))
            health = await conn.answer("GET")
            assert health is not None and health.status == 200
            assert health.json() == {"status": "ok"}
            await conn.send(whole("POST", "/readyz", b"{}"))
            wrong = await conn.answer()
            assert wrong is not None and wrong.status == 405
            assert wrong.json()["error"]["type"]
