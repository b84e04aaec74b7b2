"""A committed stream's end (idle timer, shutdown) never interrupts a send to its client.

The stream is taken from the runtime's dispatcher and pumped into a client whose
send is slow, over real sockets to a fake provider, in virtual time.
"""

from __future__ import annotations

import json

import trio

from tests.e2e.conftest import config, setup, sse_events, target
from trio_gateway import jsonio
from trio_gateway.providers.formats import ApiFormat
from trio_gateway.runtime.dispatcher import ClientRequest
from trio_gateway.runtime.target import StreamBody
from trio_gateway.testing.fake import Fault

MODEL = "gpt-4o-mini"


def one_target(fakes, **service):
    return config(
        [target(fakes[0], default_model=MODEL, models=[MODEL])],
        health={"passive": False, "threshold": 3, "interval": 60},
        service=service or None,
    )


class SlowClient:
    """Takes each chunk; its ``slow``-th send takes ``seconds`` (and calls ``meanwhile``)."""

    def __init__(self, slow: int, seconds: float, meanwhile=None) -> None:
        self.slow, self.seconds, self.meanwhile = slow, seconds, meanwhile
        self.sends = 0
        self.chunks: list[bytes] = []

    async def send(self, chunk: bytes) -> None:
        self.sends += 1
        if self.sends == self.slow:
            if self.meanwhile is not None:
                self.meanwhile()
            await trio.sleep(self.seconds)  # a cancel here would lose the chunk
        self.chunks.append(chunk)

    def events(self) -> list[tuple[str | None, str]]:
        return sse_events(b"".join(self.chunks).decode())


async def committed(s) -> StreamBody:
    route = next(iter(s.gateway.runtime.table.services.values()))
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "a b c d e"}]}
    request = ClientRequest(
        ApiFormat.OPENAI, body, jsonio.dumpb(body), MODEL, True, [], "req-stream-ends"
    )
    response = await route.dispatcher.exchange(request, route.limits)
    assert isinstance(response.body, StreamBody)
    return response.body


async def test_a_slow_client_is_not_the_providers_idleness(autojump_clock):
    """A client that takes longer than the idle budget to take an event: the stream goes on
    (before, it ended with an idle timeout counted against the target)."""
    async with setup([{}], lambda f: one_target(f, idle_timeout=5)) as s:
        client = SlowClient(slow=2, seconds=20)
        await (await committed(s)).pump(client.send)
        assert client.events()[-1] == (None, "[DONE]")
        actor = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        assert actor.failures == 0 and actor.recent[-1][1] == "ok"


async def test_an_idle_stall_after_a_slow_send_ends_the_stream_and_the_send_finishes(
    autojump_clock,
):
    async with setup(
        [{"faults": [Fault.stall_stream(600, after_chunks=3)]}],
        lambda f: one_target(f, idle_timeout=5),
        timeout=1200,
    ) as s:
        client = SlowClient(slow=2, seconds=20)
        await (await committed(s)).pump(client.send)
        assert client.sends == len(client.chunks)  # every send finished
        events = client.events()
        assert (
            "no content from the provider for 5 s" in json.loads(events[-1][1])["error"]["message"]
        )
        assert all(json.loads(data)["choices"] for _, data in events[:-1])


async def test_a_shutdown_during_a_send_lets_it_finish_then_ends_the_stream(autojump_clock):
    async with setup(
        [{"faults": [Fault.stall_stream(600, after_chunks=4)]}], one_target, timeout=1200
    ) as s:
        end = s.gateway.runtime.end_streams
        client = SlowClient(slow=2, seconds=10, meanwhile=end.set)
        started = trio.current_time()
        await (await committed(s)).pump(client.send)
        assert 10 <= trio.current_time() - started < 11  # the send, not the provider's stall
        assert client.sends == len(client.chunks) == 3  # two chunks, then the end
        events = client.events()
        assert json.loads(events[-1][1])["error"]["message"].startswith(
            "the gateway is shutting down"
        )


async def test_a_stream_never_sent_is_settled_and_its_provider_response_closed(
    autojump_clock,
):
    """The client left between the commit and the response's start: nothing is pumped."""
    async with setup([{}], one_target) as s:
        actor = s.gateway.runtime.table.dispatchers[s.upstream_id].actors[0]
        body = await committed(s)
        assert actor.in_flight == 1
        await body.discard()
        assert actor.in_flight == 0 and actor.recent[-1][1] == "cancelled"
        assert actor.failures == 0  # the client left: nothing learnt about the target
        with trio.fail_after(5):
            assert (await s.fakes[0].requests[0].wait_finished()).value == "disconnected"
        await body.discard()  # twice: nothing more
        assert actor.in_flight == 0
