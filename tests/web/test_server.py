"""The connection guard's decisions at the ASGI boundary, without sockets, in virtual time."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_gateway.web.server import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ConnectionGuard,
    ConnectionLimits,
    json_error_body,
    proxy_error_body,
)

LIMITS = ConnectionLimits(max_body=1000, body_timeout=10.0)


@attrs.define
class Recorder:
    """An app that answers ``status`` once it has the body, or at once (``early``).

    Like Quart, it reads the body in the background whatever its route does.
    """

    status: int = 200
    early: bool = False
    seen: list[Any] = attrs.Factory(list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen.append(scope)
        body_in = trio.Event()

        async def read_body() -> None:
            while (message := await receive())["type"] == "http.request":
                if not message.get("more_body"):
                    body_in.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_body)
            if not self.early:
                await body_in.wait()
            await send({"type": "http.response.start", "status": self.status, "headers": []})
            await send({"type": "http.response.body", "body": b"ok", "more_body": False})
            nursery.cancel_scope.cancel()


def scope(headers: list[tuple[bytes, bytes]], path: str = "/v1/chat/completions") -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }


class Peer:
    """hypercorn's side: request messages in, response messages out, with times."""

    def __init__(self, *bodies: bytes, more: bool = False) -> None:
        self.send_in, self.receive_in = trio.open_memory_channel[dict](100)
        for i, body in enumerate(bodies):
            last = i == len(bodies) - 1 and not more
            self.send_in.send_nowait({"type": "http.request", "body": body, "more_body": not last})
        self.sent: list[tuple[float, dict]] = []

    async def receive(self) -> dict:
        return await self.receive_in.receive()

    async def send(self, message: dict) -> None:
        self.sent.append((trio.current_time(), message))

    @property
    def status(self) -> int:
        return next(m["status"] for _, m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for _, m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for _, m in self.sent if "body" in m)

    def ended_at(self) -> float:
        return next(
            t for t, m in self.sent if m["type"] == "http.response.body" and not m["more_body"]
        )


def headers(n: int, content_length: int = 2) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(content_length).encode())] + [
        (b"x-h%d" % i, b"v") for i in range(n - 1)
    ]


@pytest.mark.parametrize(("count", "refused"), [(MAX_HEADERS, False), (MAX_HEADERS + 1, True)])
async def test_the_header_count_limit_is_exact(count: int, refused: bool, autojump_clock):
    app, peer = Recorder(), Peer(b"{}")
    guard = ConnectionGuard(app, LIMITS, error_body=proxy_error_body, closing=lambda: False)
    await guard(scope(headers(count)), peer.receive, peer.send)
    assert (peer.status == 431) is refused
    assert bool(app.seen) is not refused
    if refused:
        error = json.loads(peer.body)["error"]
        assert error["code"] == "request_header_fields_too_large"
        assert error["message"] == (
            f"the request has {count} header fields; at most {MAX_HEADERS} are accepted"
        )


@pytest.mark.parametrize(("extra", "refused"), [(0, False), (1, True)])
async def test_the_head_size_limit_is_exact(extra: int, refused: bool, autojump_clock):
    fixed = len(b"POST") + len(b"/v1/chat/completions") + 14 + len(b"content-length") + 1 + 4
    value = b"v" * (MAX_HEAD_BYTES - fixed - len(b"x-big") - 4 + extra)
    app, peer = Recorder(), Peer(b"{}")
    guard = ConnectionGuard(app, LIMITS, error_body=json_error_body, closing=lambda: False)
    await guard(scope([(b"content-length", b"2"), (b"x-big", value)]), peer.receive, peer.send)
    assert (peer.status == 431) is refused


async def test_an_early_answer_is_held_until_the_body_is_in_then_kept_alive(autojump_clock):
    app, peer = Recorder(status=401, early=True), Peer(b"half", more=True)
    guard = ConnectionGuard(app, LIMITS, error_body=json_error_body, closing=lambda: False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard, scope(headers(3, content_length=8)), peer.receive, peer.send)
        await trio.sleep(3)
        assert peer.status == 401 and b"connection" not in peer.headers
        assert peer.body == b"ok"  # the answer is out...
        with pytest.raises(StopIteration):
            peer.ended_at()  # ...but not ended: the body is still coming
        peer.send_in.send_nowait({"type": "http.request", "body": b"rest", "more_body": False})
    assert peer.ended_at() == 3


async def test_an_early_answer_ends_at_the_body_deadline_if_the_body_never_comes(
    autojump_clock,
):
    app, peer = Recorder(status=401, early=True), Peer(b"half", more=True)
    guard = ConnectionGuard(app, LIMITS, error_body=json_error_body, closing=lambda: False)
    await guard(scope(headers(3, content_length=8)), peer.receive, peer.send)
    assert peer.status == 401 and peer.ended_at() == LIMITS.body_timeout


async def test_a_body_larger_than_the_limit_is_answered_with_connection_close(autojump_clock):
    app, peer = Recorder(status=413, early=True), Peer(b"x", more=True)
    guard = ConnectionGuard(app, LIMITS, error_body=json_error_body, closing=lambda: False)
    await guard(scope(headers(3, content_length=LIMITS.max_body + 1)), peer.receive, peer.send)
    assert peer.headers[b"connection"] == b"close"
    assert peer.ended_at() == 0


async def test_while_closing_every_answer_says_connection_close(autojump_clock):
    app, peer = Recorder(), Peer(b"{}")
    guard = ConnectionGuard(app, LIMITS, error_body=json_error_body, closing=lambda: True)
    await guard(scope(headers(3)), peer.receive, peer.send)
    assert peer.status == 200 and peer.headers[b"connection"] == b"close"


# --- hypercorn's keep-alive timer once the client is gone (close_at_the_clients_end) ------------


class _Protocol:
    """What ``TCPServer`` tells its protocol: nothing to do here."""

    async def handle(self, event: Any) -> None:
        pass


@pytest.mark.parametrize("answer_ends_after", [False, True])
async def test_no_keep_alive_timer_outlives_the_clients_end(
    answer_ends_after: bool, autojump_clock
):
    """A connection whose client has gone is closed at once, not after the keep-alive timeout:
    the timer stops when reading ends, and the end of an answer sent afterwards (the race the
    soak hit: a client resetting the connection as a stream's last bytes go out) does not
    start it again."""
    from hypercorn.config import Config
    from hypercorn.events import Updated
    from hypercorn.trio.task_group import TaskGroup
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import TrioSingleTask

    from trio_gateway.web.server import close_at_the_clients_end

    close_at_the_clients_end()
    ours, clients = trio.testing.memory_stream_pair()
    tcp = TCPServer.__new__(TCPServer)
    tcp.config = Config()
    tcp.config.keep_alive_timeout = 60
    tcp.idle_task = TrioSingleTask()
    tcp.stream = ours
    tcp.protocol = _Protocol()  # type: ignore[assignment]
    tcp.context = attrs.make_class("Context", {"terminated": attrs.field()})(trio.Event())
    with trio.fail_after(1):  # virtual seconds: far less than the keep-alive timeout
        async with TaskGroup() as group:
            tcp._task_group = group
            await tcp.idle_task.restart(group, tcp._idle_timeout)  # idle, between requests
            await clients.aclose()  # the client is gone
            await tcp._read_data()
            if answer_ends_after:
                await tcp.protocol_send(Updated(idle=True))
