"""HTTP/1.1 connection conformance over raw sockets: a kept-alive connection never hangs.

Each case ends in one of two ways: the next request on the same connection is
answered, or the server closes the connection cleanly (``Connection: close``
where it can say so). None may hang: every test runs under ``fail_after`` and
in virtual time (``autojump_clock``), so a hang fails at once and the server's
timeouts (keep-alive, body) cost nothing. docs/http.md states the rules tested here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import hypercorn.trio
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from tests.e2e.conftest import CHAT, KEY, UNREACHABLE, WITH_KEY, config, setup, target
from tests.e2e.rawhttp import Answer, RawConnection, head
from tests.e2e.rawhttp import request as whole
from trio_gateway.testing.fake import open_fake_provider
from trio_gateway.testing.harness import open_gateway
from trio_gateway.web import server

LIMIT = 64 << 10
BODY_TIMEOUT = 20.0
KEEP_ALIVE = 5.0
ADMIN_TOKEN = "admin-token-for-connection-tests"
TIME_LIMIT = 60  # virtual seconds: only a hang gets near it
PROMPT = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 20_000}]}
).encode()
NEXT = whole("GET", "/v1/models", headers=[("X-Api-Key", KEY)])
# The target is never called: every case here is answered by the gateway itself.
CONFIG = config([UNREACHABLE])


@asynccontextmanager
async def gateway(**settings) -> AsyncIterator:
    async with open_gateway(
        CONFIG,
        proxy_max_body=LIMIT,
        admin_max_body=LIMIT,
        body_timeout=BODY_TIMEOUT,
        keep_alive_timeout=KEEP_ALIVE,
        admin_token=ADMIN_TOKEN,
        **settings,
    ) as gw:
        yield gw


@asynccontextmanager
async def stack() -> AsyncIterator[str]:
    """A bare app on the gateway's server stack whose route answers any status at once."""
    app = QuartTrio("early")
    app.config["MAX_CONTENT_LENGTH"] = LIMIT

    @app.post("/status/<int:status>")
    async def answer(status: int) -> Response:
        return Response(b'{"early": true}', status=status, content_type="application/json")

    @app.get("/next")
    async def next_() -> Response:
        return Response(b'{"next": true}', content_type="application/json")

    guarded = server.guard(app, server.ConnectionLimits(LIMIT, BODY_TIMEOUT))
    config_ = server.hypercorn_config(
        "127.0.0.1:0", graceful_timeout=1, keep_alive_timeout=KEEP_ALIVE
    )
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(partial(hypercorn.trio.serve, guarded, config_))
        yield urls[0]
        nursery.cancel_scope.cancel()


# --- early answers ------------------------------------------------------------------------


@attrs.frozen
class Early:
    """An answer given before the request body has been read, and what follows it."""

    status: int
    head: bytes
    body: bytes
    next: bytes
    #: The answer closes the connection (the body cannot be taken) rather than drain it.
    closes: bool = False
    on_stack: bool = False


OVERSIZED = b"x" * (LIMIT + 1)
#: A path under the rule that is no endpoint of the gateway's.
NO_ENDPOINT = "/v1/audio/speech"

EARLY = {
    "401-wrong-key": Early(
        401,
        head("POST", CHAT, length=len(PROMPT), headers=[("X-Api-Key", "wrong")]),
        PROMPT,
        NEXT,
    ),
    "404-no-endpoint": Early(
        404, head("POST", NO_ENDPOINT, length=len(PROMPT), headers=WITH_KEY), PROMPT, NEXT
    ),
    "405-method": Early(405, head("PUT", CHAT, length=len(PROMPT), headers=WITH_KEY), PROMPT, NEXT),
    "413-declared-too-large": Early(
        413,
        head("POST", CHAT, length=len(OVERSIZED), headers=WITH_KEY),
        OVERSIZED,
        NEXT,
        closes=True,
    ),
    "401-admin-token": Early(
        401,
        head("POST", "/api/v1/gateways", length=len(PROMPT), headers=[("Content-Type", "x")]),
        PROMPT,
        whole("GET", "/api/v1/gateways", headers=[("Authorization", f"Bearer {ADMIN_TOKEN}")]),
    ),
    # Statuses the gateway decides after the body today (422, 429), answered early by a
    # route on the same stack: the connection layer must not care which status it is.
    **{
        f"{status}-any-route": Early(
            status,
            head("POST", f"/status/{status}", length=len(PROMPT)),
            PROMPT,
            whole("GET", "/next"),
            on_stack=True,
        )
        for status in (401, 404, 413, 422, 429, 503)
    },
}
EARLY["413-any-route"] = attrs.evolve(EARLY["413-any-route"], closes=True)
EARLY["404-unknown-path"] = Early(
    404,
    head("POST", "/nowhere", length=len(PROMPT)),
    PROMPT,
    whole("GET", "/next"),
    on_stack=True,
)
EARLY["405-routing"] = Early(
    405, head("POST", "/next", length=len(PROMPT)), PROMPT, whole("GET", "/next"), on_stack=True
)


@asynccontextmanager
async def server_for(case: Early) -> AsyncIterator[str]:
    if case.on_stack:
        async with stack() as url:
            yield url
    else:
        async with gateway() as gw:
            yield gw.proxy_url if b"/api/" not in case.head else gw.admin_url


@pytest.mark.parametrize("timing", ["before", "with", "after"])
@pytest.mark.parametrize("kind", sorted(EARLY))
async def test_an_early_answer_leaves_the_connection_usable_or_closes_it(
    kind: str, timing: str, autojump_clock
):
    """The body sent before the answer, half with it and half after, or all after it."""
    case = EARLY[kind]
    split = {"before": len(case.body), "with": len(case.body) // 2, "after": 0}[timing]
    with trio.fail_after(TIME_LIMIT):
        async with server_for(case) as url:
            conn = await RawConnection.open(url)
            await conn.send(case.head + case.body[:split])
            first = await conn.answer()
            assert first is not None and first.status == case.status, first
            await trio.sleep(1)  # a client that takes its time: the server is done answering
            try:
                await conn.send(case.body[split:] + case.next)
            except trio.BrokenResourceError:
                assert case.closes  # the server closed, as it said it would
            second = await conn.answer("GET")
            # A body already in when the answer starts leaves nothing unread: kept either way.
            if case.closes and (first.closes or timing != "before"):
                assert first.closes
                assert second is None
                assert await conn.closed()
            else:
                assert not first.closes
                assert second is not None and second.status == 200, second


async def test_an_early_answer_closes_once_the_body_deadline_passes(autojump_clock):
    """The rest of the body never comes: the answer is out at once, the close follows."""
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            start = trio.current_time()
            await conn.send(EARLY["401-wrong-key"].head + PROMPT[:100])
            first = await conn.answer()
            assert first is not None and first.status == 401
            assert trio.current_time() - start < 1
            assert await conn.closed()
            assert trio.current_time() - start >= BODY_TIMEOUT


async def test_an_early_answer_reads_at_most_the_body_limit(autojump_clock):
    """A chunked body keeps coming after the answer: past the limit, the server closes."""
    chunk = b"x" * 4096
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(
                head(
                    "POST", CHAT, headers=[("X-Api-Key", "wrong"), ("Transfer-Encoding", "chunked")]
                )
            )
            first = await conn.answer()
            assert first is not None and first.status == 401 and not first.closes
            with pytest.raises(trio.BrokenResourceError):
                for _ in range(10 * LIMIT // len(chunk)):
                    await conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await trio.sleep(0.001)
            assert await conn.closed()


# --- Connection: close ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(whole("GET", "/v1/models", headers=[("X-Api-Key", KEY)]), id="200"),
        pytest.param(whole("POST", CHAT, PROMPT, [("X-Api-Key", "wrong")]), id="401"),
        pytest.param(
            head("POST", CHAT, length=len(PROMPT), headers=[("X-Api-Key", "no")]), id="401-early"
        ),
        pytest.param(whole("GET", "/healthz"), id="admin"),
    ],
)
async def test_connection_close_from_the_client_closes_the_connection(req: bytes, autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            url = gw.admin_url if b"healthz" in req else gw.proxy_url
            conn = await RawConnection.open(url)
            await conn.send(req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
            answer = await conn.answer()
            assert answer is not None and answer.closes
            assert await conn.closed()


async def test_connection_close_ends_a_stream_and_the_connection():
    """Real time: the stream comes from a fake provider, over the gateway's own client."""
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
    ).encode()
    async with setup([{}], lambda fakes: config([target(fakes[0])])) as s:
        with trio.fail_after(30):
            conn = await RawConnection.open(s.gateway.proxy_url)
            await conn.send(whole("POST", CHAT, body, [*WITH_KEY, ("Connection", "close")]))
            answer = await conn.answer()
            assert answer is not None and answer.status == 200 and answer.closes
            assert answer.headers["transfer-encoding"] == "chunked"
            assert answer.body.rstrip().endswith(b"data: [DONE]")
            assert await conn.closed()


# --- pipelining -----------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(autojump_clock):
    requests = [
        whole("GET", "/v1/models", headers=[("X-Api-Key", KEY), ("X-Request-Id", "one")]),
        whole("POST", CHAT, PROMPT, [("X-Api-Key", "wrong"), ("X-Request-Id", "two")]),
        whole("POST", NO_ENDPOINT, PROMPT, [*WITH_KEY, ("X-Request-Id", "three")]),
        whole("GET", "/v1/models", headers=[("X-Api-Key", KEY), ("X-Request-Id", "four")]),
    ]
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(b"".join(requests))
            answers = [await conn.answer() for _ in requests]
    assert [(a.status, a.headers["x-request-id"]) for a in answers if a] == [
        (200, "one"),
        (401, "two"),
        (404, "three"),
        (200, "four"),
    ]


# --- half-close -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_closing_after_an_answer_is_closed_at_once_not_at_the_keep_alive_timeout(
    stream: bool, autojump_clock
):
    """The server's end closes when the client's does (hypercorn 0.18's trio worker kept
    it open, a descriptor in CLOSE-WAIT, for the whole keep-alive timeout)."""
    with trio.fail_after(TIME_LIMIT):
        async with open_fake_provider() as fake:
            async with open_gateway(config([target(fake)]), keep_alive_timeout=KEEP_ALIVE) as gw:
                body = json.dumps(
                    {
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "x"}],
                        "stream": stream,
                    }
                )
                conn = await RawConnection.open(gw.proxy_url)
                await conn.send(whole("POST", CHAT, body.encode(), WITH_KEY))
                answer = await conn.answer()
                assert answer is not None and answer.status == 200
                await conn.half_close()
                with trio.fail_after(KEEP_ALIVE / 2):
                    assert await conn.closed()


async def test_a_half_close_after_an_answer_closes_the_connection(autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(NEXT)
            assert (await conn.answer("GET")).status == 200
            await conn.half_close()
            assert await conn.closed()


@pytest.mark.parametrize("cut", ["after-request", "mid-body", "mid-head"])
async def test_a_half_close_during_a_request_ends_it_cleanly(cut: str, autojump_clock):
    """A client that stops sending: an answer or a clean close, never a hang.

    A request cut short is the parser's 400 (with ``Connection: close``); a whole
    one may be answered, or dropped as the client leaving (hypercorn's choice).
    """
    sent, status = {
        "after-request": (whole("POST", CHAT, PROMPT, [("X-Api-Key", "wrong")]), 401),
        "mid-body": (head("POST", CHAT, length=len(PROMPT), headers=WITH_KEY) + PROMPT[:100], 400),
        "mid-head": (head("POST", CHAT, length=len(PROMPT), headers=WITH_KEY)[:30], 400),
    }[cut]
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(sent)
            await conn.half_close()
            answer = await conn.answer()
            assert answer is None or answer.status == status
            assert await conn.closed()


# --- idle connections and the keep-alive timeout ---------------------------------------------


@pytest.mark.parametrize("before", ["an-answer", "nothing", "half-a-head"])
async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    before: str, autojump_clock
):
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            if before == "an-answer":
                await conn.send(NEXT)
                assert (await conn.answer("GET")).status == 200
            elif before == "half-a-head":
                await conn.send(NEXT[:20])
            idle_since = trio.current_time()
            assert await conn.closed()
            assert trio.current_time() - idle_since >= KEEP_ALIVE


async def test_a_kept_alive_connection_serves_within_the_keep_alive_timeout(autojump_clock):
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            for _ in range(3):
                await conn.send(NEXT)
                assert (await conn.answer("GET")).status == 200
                await trio.sleep(KEEP_ALIVE * 0.8)


# --- bodies: size and time ---------------------------------------------------------------------


async def test_a_chunked_body_over_the_limit_is_refused_and_the_connection_closed(
    autojump_clock,
):
    chunk = b"x" * 8192
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(
                head("POST", CHAT, headers=[*WITH_KEY, ("Transfer-Encoding", "chunked")])
            )
            try:
                for _ in range(2 * LIMIT // len(chunk)):
                    await conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await conn.send(b"0\r\n\r\n" + NEXT)
            except trio.BrokenResourceError:
                pass  # closed while we were still sending: fine
            answer = await conn.answer()
            assert answer is not None and answer.status == 413 and answer.closes
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert await conn.closed()


@pytest.mark.parametrize(
    ("path", "headers", "shape"),
    [
        (CHAT, WITH_KEY, "openai"),
        ("/v1/messages", WITH_KEY, "anthropic"),
        (
            "/api/v1/gateways",
            [("Authorization", f"Bearer {ADMIN_TOKEN}"), ("Content-Type", "application/json")],
            "admin",
        ),
    ],
)
async def test_a_body_that_dribbles_past_the_body_timeout_gets_408_and_a_close(
    path: str, headers: list, shape: str, autojump_clock
):
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            url = gw.admin_url if shape == "admin" else gw.proxy_url
            conn = await RawConnection.open(url)
            start = trio.current_time()
            await conn.send(head("POST", path, length=len(PROMPT), headers=headers))
            for i in range(0, 1000, 10):  # 10 bytes a second: never done in time
                await conn.send(PROMPT[i : i + 10])
                with trio.move_on_after(1):
                    answer = await conn.answer()
                    break
            assert answer is not None and answer.status == 408 and answer.closes
            assert BODY_TIMEOUT <= trio.current_time() - start < BODY_TIMEOUT + 1
            assert_error_shape(answer, shape, "did not arrive within 20 s")
            assert await conn.closed()


def assert_error_shape(answer: Answer, shape: str, text: str) -> None:
    body = answer.json()
    if shape == "anthropic":
        assert body["type"] == "error" and text in body["error"]["message"]
    elif shape == "openai":
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert text in body["error"]["message"]
    else:
        assert set(body["error"]) == {"type", "message"} and text in body["error"]["message"]


async def test_a_whole_body_within_the_body_timeout_is_served(autojump_clock):
    """Slow but in time: the request is served and the connection kept."""
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(head("POST", NO_ENDPOINT, length=100, headers=WITH_KEY))
            for _ in range(10):
                await trio.sleep(BODY_TIMEOUT / 20)
                await conn.send(b"x" * 10)
            answer = await conn.answer()
            assert answer is not None and answer.status == 404 and not answer.closes
            await conn.send(NEXT)
            assert (await conn.answer("GET")).status == 200


# --- header limits -----------------------------------------------------------------------------


def many_headers(n: int) -> list[tuple[str, str]]:
    return [(f"X-H{i}", "v") for i in range(n)]


@pytest.mark.parametrize(
    ("headers", "path", "shape", "text"),
    [
        (many_headers(120), CHAT, "openai", "header fields; at most 100 are accepted"),
        (many_headers(120), "/v1/messages", "anthropic", "header fields; at most 100 are accepted"),
        ([("X-Big", "v" * (40 << 10))], CHAT, "openai", "at most 32768 are accepted"),
        ([("X-Big", "v" * (40 << 10))], "/api/v1/gateways", "admin", "at most 32768"),
    ],
)
async def test_a_head_over_the_limits_gets_a_clear_431(
    headers: list, path: str, shape: str, text: str, autojump_clock
):
    """The app never sees it; like any early answer, the body is drained, the connection kept."""
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            url = gw.admin_url if shape == "admin" else gw.proxy_url
            conn = await RawConnection.open(url)
            admin = [("Authorization", f"Bearer {ADMIN_TOKEN}")]
            second = whole("GET", "/api/v1/gateways", headers=admin) if shape == "admin" else NEXT
            await conn.send(whole("POST", path, PROMPT, [*WITH_KEY, *headers]) + second)
            answer = await conn.answer()
            assert answer is not None and answer.status == 431 and not answer.closes
            assert_error_shape(answer, shape, text)
            assert (await conn.answer("GET")).status == 200


async def test_a_head_within_the_limits_is_served(autojump_clock):
    headers = [*many_headers(95), ("X-Big", "v" * (30 << 10))]
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            await conn.send(whole("GET", "/v1/models", headers=[("X-Api-Key", KEY), *headers]))
            assert (await conn.answer("GET")).status == 200


async def test_a_head_over_the_parser_buffer_is_refused_by_the_parser(autojump_clock):
    """A head still incomplete past PARSER_BUFFER: h11 refuses it, a bare 431, then the close."""
    with trio.fail_after(TIME_LIMIT):
        async with gateway() as gw:
            conn = await RawConnection.open(gw.proxy_url)
            try:
                await conn.send(b"GET /v1/models HTTP/1.1\r\nX-Big: ")
                for _ in range(server.PARSER_BUFFER // 4096 + 1):
                    await conn.send(b"v" * 4096)
                    await trio.sleep(0.01)
            except trio.BrokenResourceError:
                pass
            answer = await conn.answer("GET")
            assert answer is not None and answer.status == 431 and answer.closes
            assert await conn.closed()


# --- helpers' own check ------------------------------------------------------------------------


def test_every_early_answer_kind_is_exercised():
    assert {c.status for c in EARLY.values()} >= {401, 404, 405, 413, 422, 429}
