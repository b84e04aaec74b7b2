"""Each fault over real sockets: what an HTTP client (httpx2) observes, and what the fake saw.

Delays are short and real; every test has an absolute ``fail_after`` bound.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator

import httpx2
import pytest
import trio

from trio_gateway.testing.fake import FakeProvider, Fault, FaultKind, Outcome, open_fake_provider
from trio_gateway.testing.plugin import FakeProviderFactory

from .helpers import (
    ANTHROPIC,
    CLAUDE,
    OPENAI,
    STREAMS,
    TIMEOUT,
    chat,
    is_json,
    is_terminator,
    messages,
    parse_sse,
    read_events,
)

#: The APIs with streams: chat completions, Messages and OpenAI's Responses API.
DIALECTS = ["openai", "anthropic", "responses"]


@pytest.fixture
async def fake(fake_provider: FakeProviderFactory) -> FakeProvider:
    return await fake_provider()


@pytest.fixture
async def client(fake: FakeProvider) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


async def healthy_events(client: httpx2.AsyncClient, fake: FakeProvider, dialect: str) -> list:
    faults = fake.faults
    fake.clear_faults()
    _, events = await read_events(client, dialect)
    fake.set_faults(faults)
    return events


# --- before the response ------------------------------------------------------------------


async def test_latency(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.latency(0.2, jitter=0.05))
    with trio.fail_after(TIMEOUT):
        start = time.monotonic()
        response = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        elapsed = time.monotonic() - start
    assert response.status_code == 200 and 0.15 <= elapsed < 2
    assert fake.requests[-1].faults == (FaultKind.LATENCY,)


async def test_error_n_times(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.error(503, times=2))
    with trio.fail_after(TIMEOUT):
        codes = [
            (await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)).status_code
            for _ in range(3)
        ]
        response = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
    assert codes == [503, 503, 200]
    assert response.status_code == 200
    assert [r.status for r in fake.requests] == [503, 503, 200, 200]


@pytest.mark.parametrize(
    ("dialect", "body"),
    [
        (
            "openai",
            {
                "error": {
                    "message": "The engine is currently overloaded, please try again later.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
        ("anthropic", {"type": "error", "error": {"type": "api_error", "message": "Error"}}),
    ],
)
async def test_error_bodies_are_the_apis_own(
    client: httpx2.AsyncClient, fake: FakeProvider, dialect: str, body: dict
) -> None:
    fake.set_faults(Fault.error(503))
    path, headers, request = STREAMS[dialect]
    with trio.fail_after(TIMEOUT):
        response = await client.post(path, json=request, headers=headers)
    assert response.status_code == 503 and response.json() == body
    assert "retry-after" not in response.headers


async def test_error_with_a_given_body_and_headers(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    fake.set_faults(
        Fault.error(502, body="<html>Bad Gateway</html>", headers={"content-type": "text/html"}),
    )
    with trio.fail_after(TIMEOUT):
        html = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        fake.set_faults(Fault.error(500, body={"detail": "custom"}, retry_after=2))
        custom = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert (html.status_code, html.text, html.headers["content-type"]) == (
        502,
        "<html>Bad Gateway</html>",
        "text/html",
    )
    assert custom.json() == {"detail": "custom"} and custom.headers["retry-after"] == "2"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_rate_limit(client: httpx2.AsyncClient, fake: FakeProvider, dialect: str) -> None:
    fake.set_faults(Fault.rate_limit(retry_after=2.5))
    path, headers, request = STREAMS[dialect]
    with trio.fail_after(TIMEOUT):
        response = await client.post(path, json=request, headers=headers)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert response.headers["retry-after-ms"] == "2500"
    error = response.json()["error"]
    assert error["type"] == ("rate_limit_error" if dialect == "anthropic" else "requests")


async def test_overloaded(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.overloaded())
    with trio.fail_after(TIMEOUT):
        response = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_a_fraction_of_requests(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.error(500, probability=0.5))
    with trio.fail_after(TIMEOUT):
        codes = [
            (await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)).status_code
            for _ in range(40)
        ]
    assert 8 <= codes.count(500) <= 32 and set(codes) == {200, 500}


async def test_time_window(client: httpx2.AsyncClient, fake: FakeProvider, autojump_clock) -> None:
    fake.set_faults(Fault.error(503, window=(0, 0.4)))
    with trio.fail_after(TIMEOUT):
        inside = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        await trio.sleep(0.5)
        after = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert (inside.status_code, after.status_code) == (503, 200)


async def test_flapping(client: httpx2.AsyncClient, fake: FakeProvider, autojump_clock) -> None:
    fake.set_faults(Fault.flap(down=0.4, up=30))
    with trio.fail_after(TIMEOUT):
        down = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        await trio.sleep(0.5)
        up = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert (down.status_code, up.status_code) == (503, 200)


async def test_targeting_a_path_or_a_model(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.error(500, path="/v1/messages"), Fault.error(503, model="gpt-4"))
    with trio.fail_after(TIMEOUT):
        claude = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
        gpt4 = await client.post("/v1/chat/completions", json=chat(model="gpt-4"), headers=OPENAI)
        mini = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert (claude.status_code, gpt4.status_code, mini.status_code) == (500, 503, 200)


async def test_hang(client: httpx2.AsyncClient, fake: FakeProvider) -> None:
    fake.set_faults(Fault.hang())
    with trio.fail_after(TIMEOUT):
        with pytest.raises(httpx2.ReadTimeout):
            await client.post("/v1/chat/completions", json=chat(), headers=OPENAI, timeout=0.3)
        # The client gave up and closed the connection: the fake sees it go.
        assert await fake.requests[-1].wait_finished() is Outcome.DISCONNECTED
    assert fake.requests[-1].status is None
    assert fake.statistics().disconnected == 1


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (
            Fault.close(),
            httpx2.RemoteProtocolError,
            "Server disconnected without sending a response",
        ),
        (Fault.reset(), httpx2.ReadError, "reset"),
    ],
    ids=["close", "reset"],
)
async def test_connection_dropped_before_the_response(
    client: httpx2.AsyncClient,
    fake: FakeProvider,
    fault: Fault,
    error: type[Exception],
    message: str,
) -> None:
    fake.set_faults(fault)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(error, match=message):
            await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
        record = fake.requests[-1]
        assert await record.wait_finished() is Outcome.ABORTED
        fake.clear_faults()
        # The client recovers on a new connection.
        response = await client.post("/v1/chat/completions", json=chat(), headers=OPENAI)
    assert response.status_code == 200
    assert fake.statistics().connections_total == 2


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_headers_then_silence(
    client: httpx2.AsyncClient, fake: FakeProvider, dialect: str
) -> None:
    fake.set_faults(Fault.hang_after_headers())
    path, headers, request = STREAMS[dialect]
    with trio.fail_after(TIMEOUT):
        async with client.stream(
            "POST", path, json=request, headers=headers, timeout=0.3
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            with pytest.raises(httpx2.ReadTimeout):
                await response.aread()
        assert await fake.requests[-1].wait_finished() is Outcome.DISCONNECTED


# --- in the stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_slow_first_token(
    client: httpx2.AsyncClient, fake: FakeProvider, dialect: str
) -> None:
    fake.set_faults(Fault.slow_first_token(0.5))
    path, headers, request = STREAMS[dialect]
    with trio.fail_after(TIMEOUT):
        start = time.monotonic()
        async with client.stream("POST", path, json=request, headers=headers) as response:
            to_headers = time.monotonic() - start
            body = await response.aread()
            to_body = time.monotonic() - start
    assert to_headers < 0.45 <= to_body
    assert is_terminator(parse_sse(body)[-1], dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_mid_stream(
    client: httpx2.AsyncClient, fake: FakeProvider, dialect: str
) -> None:
    normal = await healthy_events(client, fake, dialect)
    fake.set_faults(Fault.stall_stream(0.5, after_chunks=3))
    path, headers, request = STREAMS[dialect]
    lines: list[tuple[float, str]] = []
    with trio.fail_after(TIMEOUT):
        async with client.stream("POST", path, json=request, headers=headers) as response:
            async for line in response.aiter_lines():
                lines.append((time.monotonic(), line))
    data = [line for _, line in lines if line.startswith("data: ")]
    stalled = [i for i, ((a, _), (b, _)) in enumerate(itertools.pairwise(lines)) if b - a >= 0.45]
    assert len(stalled) == 1  # one pause...
    assert sum(line.startswith("data: ") for _, line in lines[: stalled[0] + 1]) == 3  # after 3
    assert len(data) == len(normal)  # ...and the whole stream after it


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_event(
    client: httpx2.AsyncClient, fake: FakeProvider, dialect: str
) -> None:
    normal = await healthy_events(client, fake, dialect)
    fake.set_faults(Fault.malformed_event(after_chunks=2))
    with trio.fail_after(TIMEOUT):
        _, events = await read_events(client, dialect)
    assert [is_json(data) for _, data in events[:4]] == [True, True, False, True]
    assert events[:2] + events[3:] == normal  # one bad event inserted, the rest intact
    assert events[2][0] == normal[2][0] and normal[2][1].startswith(events[2][1])


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_error_event(client: httpx2.AsyncClient, fake: FakeProvider, dialect: str) -> None:
    normal = await healthy_events(client, fake, dialect)
    fake.set_faults(Fault.error_event(after_chunks=3))
    with trio.fail_after(TIMEOUT):
        response, events = await read_events(client, dialect)
    assert response.status_code == 200
    assert events[:3] == normal[:3] and len(events) == 4
    name, data = events[3]
    if dialect == "anthropic":
        assert name == "error"
        assert json.loads(data)["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    elif dialect == "responses":  # after response.created: the response failed
        failed = json.loads(data)
        assert name == "response.failed" and failed["sequence_number"] == 3
        assert failed["response"]["status"] == "failed"
        assert failed["response"]["error"]["code"] == "server_error"
    else:
        assert name is None and json.loads(data)["error"]["code"] == "overloaded"
    assert await fake.requests[-1].wait_finished() is Outcome.COMPLETED


async def test_responses_error_event_for_a_rate_limit(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    """A 4xx mid-stream is an ``error`` event (nested, as OpenAI sends it), not a failed response."""
    fake.set_faults(Fault.error_event(429, after_chunks=2))
    with trio.fail_after(TIMEOUT):
        _, events = await read_events(client, "responses")
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "error"]
    error = json.loads(events[2][1])
    assert error["sequence_number"] == 2 and error["type"] == "error"
    assert error["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_cut_stream(client: httpx2.AsyncClient, fake: FakeProvider, dialect: str) -> None:
    normal = await healthy_events(client, fake, dialect)
    fake.set_faults(Fault.cut_stream(after_chunks=3))
    path, headers, request = STREAMS[dialect]
    received = b""
    with trio.fail_after(TIMEOUT):
        async with client.stream("POST", path, json=request, headers=headers) as response:
            assert response.status_code == 200
            with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
                async for chunk in response.aiter_raw():
                    received += chunk
        assert await fake.requests[-1].wait_finished() is Outcome.ABORTED
    assert parse_sse(received) == normal[:3]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_no_terminator(client: httpx2.AsyncClient, fake: FakeProvider, dialect: str) -> None:
    normal = await healthy_events(client, fake, dialect)
    fake.set_faults(Fault.no_terminator())
    with trio.fail_after(TIMEOUT):
        response, events = await read_events(client, dialect)
    assert response.status_code == 200  # a clean end of the body...
    assert is_terminator(normal[-1], dialect)
    assert events == normal[:-1]  # ...without the terminator


async def test_stream_faults_leave_non_streaming_requests_alone(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.cut_stream(after_chunks=0))
    with trio.fail_after(TIMEOUT):
        response = await client.post("/v1/messages", json=messages(), headers=ANTHROPIC)
    assert response.status_code == 200 and response.json()["model"] == CLAUDE
    assert fake.statistics().faults[0].matched == 0


async def test_stream_faults_wait_for_a_stream(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.cut_stream(after_chunks=1, times=1))
    path, headers, request = STREAMS["openai"]
    with trio.fail_after(TIMEOUT):
        rejected = await client.post(path, json=request)  # no credential: no stream to cut
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post(path, json=request, headers=headers)
        healthy = await client.post(path, json=request, headers=headers)
    assert (rejected.status_code, healthy.status_code) == (401, 200)
    assert [r.faults for r in fake.requests] == [(), (FaultKind.CUT_STREAM,), ()]


# --- the client goes away; the fake goes away -----------------------------------------------


async def test_a_client_leaving_mid_stream_is_seen(
    client: httpx2.AsyncClient, fake: FakeProvider
) -> None:
    fake.set_faults(Fault.stall_stream(30, after_chunks=2))
    path, headers, request = STREAMS["openai"]
    with trio.fail_after(TIMEOUT):
        async with (
            client.stream("POST", path, json=request, headers=headers) as response,
            contextlib.aclosing(response.aiter_lines()) as lines,
        ):
            first = await anext(lines)
            assert first.startswith("data: ")
            record = await fake.wait_requests(1)
            assert record.outcome is Outcome.PENDING
        # Leaving the block closed the connection mid-stream.
        assert await record.wait_finished() is Outcome.DISCONNECTED
    assert fake.statistics().disconnected == 1


async def test_stopping_is_not_held_up_by_hung_requests(autojump_clock) -> None:
    errors: list[str] = []

    async def call(client: httpx2.AsyncClient, url: str) -> None:
        try:
            await client.post(url + "/v1/chat/completions", json=chat(), headers=OPENAI)
        except httpx2.RemoteProtocolError as exc:
            errors.append(str(exc))

    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(timeout=TIMEOUT) as client, trio.open_nursery() as calls:
            faults = [Fault.hang(times=1), Fault.hang_after_headers()]
            async with open_fake_provider(faults=faults) as fake:
                calls.start_soon(call, client, fake.url)
                calls.start_soon(call, client, fake.url)
                await fake.wait_requests(2)
                await trio.sleep(0.05)  # both requests are now hanging
                leaving = trio.current_time()
            assert trio.current_time() - leaving < 1  # stopping did not wait for them
    assert sorted(errors) == [
        "Server disconnected without sending a response.",
        "peer closed connection without sending complete message body (incomplete chunked read)",
    ]
    assert [r.outcome for r in fake.requests] == [Outcome.DISCONNECTED] * 2
