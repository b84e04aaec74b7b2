"""Shutdown keeps the streaming promise, and idle connections do not hold it up.

The gateway runs as ``serve`` does under the CLI (a ``shutdown`` event instead of
SIGTERM), in virtual time: a 6 s stream against a 3 s grace period takes no real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx2
import pytest
import trio

from tests.e2e.conftest import KEY, config, sse_events, target
from tests.e2e.rawhttp import RawConnection, request
from trio_gateway.config.file import parse
from trio_gateway.serve import STREAM_END_MARGIN_S, Running, serve
from trio_gateway.testing.fake import FakeProvider, Fault, open_fake_provider
from trio_gateway.testing.harness import TEST_SETTINGS

GRACE = 3.0
TIME_LIMIT = 60  # virtual seconds


@attrs.define
class Stopping:
    gateway: Running
    shutdown: trio.Event
    stopped: trio.Event = attrs.Factory(trio.Event)
    #: Virtual time at which ``serve`` returned (``None`` while it runs).
    stopped_at: float | None = None


@asynccontextmanager
async def gateway(fake: FakeProvider | None = None, **settings) -> AsyncIterator[Stopping]:
    """A gateway serving as the CLI runs it, in front of ``fake``; stopped by ``shutdown``."""
    cfg = config(
        [target(fake)] if fake else [{"provider": "openai", "base_url": "http://127.0.0.1:9"}]
    )
    shutdown = trio.Event()
    settings = attrs.evolve(TEST_SETTINGS, **{"graceful_timeout": GRACE, **settings})
    async with trio.open_nursery() as nursery:
        state: Stopping | None = None

        async def run(task_status: trio.TaskStatus[Running]) -> None:
            await serve(settings, parse(cfg, {}), shutdown=shutdown, task_status=task_status)
            assert state is not None
            state.stopped_at = trio.current_time()
            state.stopped.set()

        state = Stopping(await nursery.start(run), shutdown)
        yield state


@pytest.mark.parametrize(
    ("path", "dialect"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")]
)
async def test_a_stream_still_running_at_the_end_of_the_grace_period_ends_with_an_error_event(
    path: str, dialect: str, autojump_clock
):
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four five"}],
    }
    with trio.fail_after(TIME_LIMIT):
        async with open_fake_provider(
            api_key="sk-fake", faults=[Fault.stall_stream(6, after_chunks=3)]
        ) as fake:
            async with gateway(fake) as gw:
                async with (
                    httpx2.AsyncClient(base_url=gw.gateway.proxy_url, timeout=30) as client,
                    client.stream("POST", path, json=body, headers={"X-Api-Key": KEY}) as resp,
                ):
                    assert resp.status_code == 200
                    chunks = resp.aiter_text()
                    received = await anext(chunks)  # the stream is committed
                    gw.shutdown.set()
                    start = trio.current_time()
                    async for chunk in chunks:  # a clean end: no "incomplete chunked read"
                        received += chunk
                    ended = trio.current_time() - start
    # Ended shortly before the grace period ran out, not cut when it did.
    assert GRACE - STREAM_END_MARGIN_S <= ended < GRACE
    assert gw.stopped_at is not None and gw.stopped_at - start < GRACE
    event, data = sse_events(received)[-1]
    if dialect == "anthropic":
        assert event == "error"
        assert '"type":"error"' in data.replace(" ", "")
    else:
        assert event is None and data.startswith('{"error"')
    assert "the gateway is shutting down" in data


async def test_an_idle_kept_alive_connection_does_not_hold_up_shutdown(autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with gateway(graceful_timeout=10.0) as gw:
            conn = await RawConnection.open(gw.gateway.proxy_url)
            await conn.send(request("GET", "/v1/models", headers=[("X-Api-Key", KEY)]))
            assert (await conn.answer("GET")).status == 200
            await trio.sleep(1)  # idle, well within the keep-alive timeout
            start = trio.current_time()
            gw.shutdown.set()
            assert await conn.closed()
            await gw.stopped.wait()
    assert gw.stopped_at - start < 1  # not the 10 s grace period


async def test_an_answer_given_during_the_grace_period_closes_its_connection(autojump_clock):
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    with trio.fail_after(TIME_LIMIT):
        async with open_fake_provider(api_key="sk-fake", faults=[Fault.latency(2)]) as fake:
            async with gateway(fake) as gw:
                conn = await RawConnection.open(gw.gateway.proxy_url)
                await conn.send(
                    request(
                        "POST",
                        "/v1/chat/completions",
                        body,
                        [("X-Api-Key", KEY), ("Content-Type", "application/json")],
                    )
                )
                await trio.sleep(1)
                gw.shutdown.set()
                answer = await conn.answer()
                assert answer is not None and answer.status == 200 and answer.closes
                assert await conn.closed()
