"""The fake provider's connections follow the gateway's rules (trio_gateway/web/server.py).

The gateway's own HTTP client pools its connections to the fakes: one left
broken by an answer would stall the next request sent on it.
"""

from __future__ import annotations

import trio

from tests.e2e.rawhttp import RawConnection, head, request
from trio_gateway.testing.fake import FakeProvider
from trio_gateway.testing.plugin import FakeProviderFactory

from .helpers import KEY

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
NEXT = request("GET", "/_fake/requests")


async def open_connection(fake_provider: FakeProviderFactory) -> tuple[FakeProvider, RawConnection]:
    fake = await fake_provider(api_key=KEY)
    return fake, await RawConnection.open(fake.url)


async def test_connection_close_closes_the_connection(
    fake_provider: FakeProviderFactory, autojump_clock
) -> None:
    with trio.fail_after(300):
        _, conn = await open_connection(fake_provider)
        await conn.send(request("GET", "/_fake/requests", headers=[("Connection", "close")]))
        answer = await conn.answer("GET")
        assert answer is not None and answer.status == 200 and answer.closes
        assert await conn.closed()


async def test_an_early_answer_leaves_the_connection_usable(
    fake_provider: FakeProviderFactory, autojump_clock
) -> None:
    with trio.fail_after(300):
        _, conn = await open_connection(fake_provider)
        await conn.send(head("POST", "/_fake/nowhere", length=len(BODY)))
        first = await conn.answer()
        assert first is not None and first.status == 404 and not first.closes
        await trio.sleep(1)
        await conn.send(BODY + NEXT)
        second = await conn.answer("GET")
        assert second is not None and second.status == 200


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    fake_provider: FakeProviderFactory, autojump_clock
) -> None:
    with trio.fail_after(300):
        _, conn = await open_connection(fake_provider)
        await conn.send(NEXT)
        assert (await conn.answer("GET")).status == 200
        assert await conn.closed()
