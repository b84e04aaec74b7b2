"""The HTTP/1.1 connection layer under the admin API, the proxy and the fake providers.

hypercorn (trio worker, h11) reads and writes HTTP/1.1. This module configures
it (:func:`hypercorn_config`) and wraps each app in a :class:`ConnectionGuard`
(:func:`guard`), which decides what becomes of the connection around each
exchange, so that a kept-alive connection is always either ready for the next
request or closed (docs/http.md says it for users).

Theory of operation
-------------------
The guard sees one exchange's ASGI messages both ways and keeps a few facts
about it (:class:`_Exchange`): the declared body length, the bytes received,
whether the body is complete, whether an answer has started. From them:

* **The head.** More than ``max_headers`` header fields, or a head (request line
  and headers) over ``max_head_bytes``: the guard answers ``431`` itself, as an
  early answer (below), and the app never sees the request. A head over
  :data:`PARSER_BUFFER` never reaches the guard: h11 refuses it (a bare ``431``,
  and the connection closes).
* **The body deadline.** The body must be complete ``body_timeout`` seconds after
  the head arrived. If it is not and nothing was answered yet, the guard answers
  ``408`` with ``Connection: close`` and tells the app the client left
  (``http.disconnect``). It owns this timeout: Quart's own ``BODY_TIMEOUT`` is
  switched off, so there is one deadline per request, measured from the head.
* **Early answers.** An answer that starts before the body is complete (``401``,
  ``404``, ``405``, ``413``, ...) either:

  - closes: when the body cannot be taken (declared larger than ``max_body``, or
    the answer is ``408`` or ``413``), it says ``Connection: close`` and hypercorn
    closes the connection after it; or
  - drains: otherwise the answer goes out at once, and its end is held back until
    the rest of the body has been read and thrown away (at most ``max_body``
    bytes, until the body deadline); the connection then serves the next request.
    If a bound is hit first, the connection is closed after the answer. The app
    must read ``receive`` to the end meanwhile: Quart does for every request, in
    the background, keeping at most ``MAX_CONTENT_LENGTH`` bytes; the proxy's
    ``ProxyApp`` reads what it needs and discards the rest (``_Call._discard``).

  Unread body bytes are never left to be parsed as the next request.
* **Shutting down** (``closing()`` true): every answer says ``Connection: close``.

hypercorn 0.18 workaround
-------------------------
hypercorn settles a connection after a response (close it, or re-arm its
keep-alive timer) in the task that sent the app's last message, right after
telling the app the request is over (``http.disconnect``). quart-trio (and the
proxy's ``ProxyApp``, which does as it did) answers that by cancelling its request
nursery, which holds that very task, so the close
or the timer re-arm is cancelled at its first checkpoint
(``hypercorn/protocol/h11.py``, ``H11Protocol._maybe_recycle``). Then a
connection that must close stays open (``Connection: close``, early answers: the
next request on it hangs) and a kept-alive connection never times out (and holds
shutdown for the whole grace period). ``patches/`` holds the fix for upstream.
Until a fixed release is pinned, the guard holds back the ``http.disconnect``
that hypercorn sends the app while the answer's last message is being sent,
until that send is over: the app then cancels nothing before the connection is
settled. (It also holds back a disconnect while a whole, ``Content-Length``
answer is being sent, so a client that half-closes after its request still gets
its whole answer rather than a cut one; a stream hears of it at once.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from quart import Quart

from trio_gateway.errors import GatewayError, HeadersTooLarge, RequestTimeout
from trio_gateway.providers.formats import ApiFormat, error_body
from trio_gateway.web.http import ASGIApp, Message, Receive, Scope, Send
from trio_gateway.web.proxy import client_format

#: The body of an error the guard answers itself, in the app's error format.
ErrorBody = Callable[[Scope, GatewayError], bytes]

#: Header fields a request may have (Apache's and Envoy's default).
MAX_HEADERS = 100
#: Bytes a request head (request line and header fields) may take.
MAX_HEAD_BYTES = 32 << 10
#: What h11 buffers of an incomplete head before it refuses it with a bare 431:
#: the memory a slow or hostile head can hold per connection.
PARSER_BUFFER = 64 << 10
BODY_TIMEOUT_S = 60.0
#: nginx's default, and longer than the idle timeouts of clients' pools (httpx's 5 s)
#: and of load balancers (60 s): the client, not the server, should drop an idle
#: connection, or a request sent on it just as the server closes it is lost.
KEEP_ALIVE_TIMEOUT_S = 75.0
#: Connections the kernel completes and queues for each listener until the event loop
#: accepts them (gunicorn's and uvicorn's default; the kernel caps it at
#: ``net.core.somaxconn``, 4096 on current Linux). hypercorn's own 100 overflows when
#: a few hundred clients connect within a second while the loop is busy: each
#: connection refused then waits for its SYN to be sent again, 1 s later, then 3 s...
LISTEN_BACKLOG = 2048

#: Answers that say the body will not be taken: the connection closes after them.
REFUSES_BODY = frozenset({408, 413})
#: How long a disconnect may be held back from the app (``_Exchange.holding``).
HOLD_S = 5.0
_CLOSE = (b"connection", b"close")
_END: Message = {"type": "http.response.body", "body": b"", "more_body": False}
_DISCONNECT: Message = {"type": "http.disconnect"}


@attrs.frozen
class ConnectionLimits:
    """What one app accepts of a request, before and besides what its routes check."""

    #: The app's own body limit (Quart's ``MAX_CONTENT_LENGTH``, ``ProxyApp.max_body``);
    #: also the most an early answer reads and discards to keep the connection.
    max_body: int
    body_timeout: float = BODY_TIMEOUT_S
    max_headers: int = MAX_HEADERS
    max_head_bytes: int = MAX_HEAD_BYTES


def close_at_the_clients_end() -> None:
    """hypercorn 0.18's trio worker: close a connection as soon as its client has closed.

    Its ``TCPServer`` leaves the keep-alive timer running when the client's end of the
    connection closes (the asyncio worker stops it), and the connection's task group
    waits for it; the answer being sent can even start the timer again after reading
    ended (a client that resets the connection as the end of a stream goes out). Each
    such connection stayed open (in ``CLOSE-WAIT`` or reset, a file descriptor) for the
    whole ``keep_alive_timeout``, 75 s by default: the soak (docs/testing.md), whose
    clients close a stream's connection at its last event, ended with ~2,300 of them.
    Reading is over when the client's end closes, so the timer has nothing left to
    time: it is stopped then, and not started again. Applied once, by
    :func:`hypercorn_config`; patches/README.md has the upstream fix.
    """
    from hypercorn.events import Updated
    from hypercorn.trio.tcp_server import TCPServer

    read_data = TCPServer._read_data
    if getattr(read_data, "_stops_the_idle_timer", False):
        return
    protocol_send = TCPServer.protocol_send

    async def _read_data(self: TCPServer) -> None:
        try:
            await read_data(self)
        finally:
            self._trio_gateway_read_over = True  # type: ignore[attr-defined]
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

    async def _protocol_send(self: TCPServer, event: Any) -> None:
        if (
            isinstance(event, Updated)
            and event.idle
            and getattr(self, "_trio_gateway_read_over", False)
        ):
            return  # nothing more is read on this connection: no keep-alive timer
        await protocol_send(self, event)

    _read_data._stops_the_idle_timer = True  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data  # type: ignore[method-assign]
    TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def hypercorn_config(
    bind: str | None = None,
    *,
    graceful_timeout: float | None = None,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT_S,
    errorlog: logging.Logger | None = None,
) -> HypercornConfig:
    """hypercorn's settings for one listener (``bind``), or for connections served by hand.

    No ``read_timeout``: hypercorn applies it to every read of the connection,
    also while a long answer streams and the client rightly sends nothing. The
    body has its own deadline (the guard's); an idle connection and a slow head
    are bounded by ``keep_alive_timeout`` (hypercorn's idle timer runs from
    the connection's start, or the end of the last answer, until a whole head has
    arrived).
    """
    close_at_the_clients_end()
    config = HypercornConfig()
    if bind is not None:
        config.bind = [bind]
    if graceful_timeout is not None:
        config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    config.backlog = LISTEN_BACKLOG
    config.h11_max_incomplete_size = PARSER_BUFFER
    config.accesslog = None
    config.errorlog = errorlog if errorlog is not None else logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


def guard(
    app: Quart | ASGIApp,
    limits: ConnectionLimits,
    *,
    error_body: ErrorBody | None = None,
    closing: Callable[[], bool] | None = None,
    refused: Callable[[Scope, GatewayError], None] | None = None,
) -> ConnectionGuard:
    """``app`` behind a :class:`ConnectionGuard`; the guard takes over its body timeout
    (a Quart app's own is switched off; another app must have none).

    ``refused`` hears of each request the guard answers without the app (telemetry).
    """
    if isinstance(app, Quart):
        app.config["BODY_TIMEOUT"] = None
    return ConnectionGuard(
        app,
        limits,
        error_body=error_body or json_error_body,
        closing=closing or _never,
        refused=refused,
    )


def _never() -> bool:
    return False


def json_error_body(scope: Scope, error: GatewayError) -> bytes:
    """``{"error": {"type", "message"}}``: the admin API's error shape."""
    return json.dumps({"error": {"type": error.type, "message": error.message}}).encode()


def proxy_error_body(scope: Scope, error: GatewayError) -> bytes:
    """The error in the client's dialect, told as the proxy tells it (path, then headers)."""
    fmt = client_format(scope["path"])
    if fmt is None:
        anthropic = any(name == b"anthropic-version" for name, _ in scope["headers"])
        fmt = ApiFormat.ANTHROPIC if anthropic else ApiFormat.OPENAI
    return error_body(fmt, error.status, error.type, error.message)


class ConnectionGuard:
    """An ASGI app that runs ``app`` under the connection rules of the module docstring.

    Holds no task and no state between exchanges; each HTTP exchange gets an
    :class:`_Exchange`. Other scopes (lifespan) pass through untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: ConnectionLimits,
        *,
        error_body: ErrorBody,
        closing: Callable[[], bool],
        refused: Callable[[Scope, GatewayError], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.error_body = error_body
        self.closing = closing
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        problem = exchange.read_head()
        if problem is None:
            await self.app(scope, exchange.receive, exchange.send)
            return
        # Refused without the app: read (and drop) the body as the app would have.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(exchange.discard_body)
            await exchange.answer(problem)
            nursery.cancel_scope.cancel()
        if self.refused is not None:
            self.refused(scope, problem)


class _Exchange:
    """One request and its answer, as the guard follows them."""

    __slots__ = (
        "_guard",
        "_receive",
        "_receive_nowait",
        "_released",
        "_send",
        "_wake",
        "answered",
        "body_done",
        "close",
        "deadline",
        "declared",
        "holding",
        "received",
        "scope",
        "taken_over",
    )

    def __init__(self, guard: ConnectionGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self._guard = guard
        self._receive = receive
        # hypercorn's trio worker hands the app a memory channel's ``receive``: what is
        # already there is taken without a cancel scope (most bodies come with the head).
        channel = getattr(receive, "__self__", None)
        self._receive_nowait = getattr(channel, "receive_nowait", None)
        self._send = send
        self._wake: trio.Event | None = None
        #: A disconnect is held back from the app until the answer has ended: while
        #: its last message is sent (the hypercorn 0.18 workaround), and all along a
        #: whole (``Content-Length``) answer.
        self.holding = False
        self._released: trio.Event | None = None
        self.scope = scope
        self.deadline = trio.current_time() + guard.limits.body_timeout
        self.declared: int | None = None
        self.received = 0
        self.body_done = False
        #: The response has started (the app's, or the guard's own).
        self.answered = False
        #: The guard answered instead of the app; the app's messages are dropped.
        self.taken_over = False
        #: The answer says ``Connection: close``.
        self.close = False

    def read_head(self) -> GatewayError | None:
        """Note the declared body length; the head's problem if it is over a limit."""
        limits = self._guard.limits
        headers = self.scope["headers"]
        if len(headers) > limits.max_headers:
            return HeadersTooLarge(
                f"the request has {len(headers)} header fields; "
                f"at most {limits.max_headers} are accepted"
            )
        scope = self.scope
        # The request line (method, target, version, separators), then each field's line.
        size = len(scope["method"]) + len(scope["raw_path"]) + len(scope["query_string"]) + 14
        size += 4 * len(headers)
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length":
                self.declared = int(value)  # h11 checked it: digits only
        if size > limits.max_head_bytes:
            return HeadersTooLarge(
                f"the request head is {size} bytes; at most {limits.max_head_bytes} are accepted"
            )
        return None

    # --- the app's side ------------------------------------------------------------------

    async def receive(self) -> Message:
        if not (self.body_done or self.answered):
            if self._receive_nowait is not None:
                try:
                    return await self._saw(self._receive_nowait())
                except trio.WouldBlock:
                    pass
            with trio.move_on_at(self.deadline):
                return await self._saw(await self._receive())
            if not self.answered:
                self.taken_over = True
                timeout = self._guard.limits.body_timeout
                await self.answer(
                    RequestTimeout(f"the request body did not arrive within {timeout:g} s")
                )
                return _DISCONNECT
        return await self._saw(await self._receive())

    async def send(self, message: Message) -> None:
        if not self.taken_over:
            await self._forward(message)

    # --- the guard's own doing -------------------------------------------------------------

    async def _saw(self, message: Message) -> Message:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.body_done = True
                self._stop_draining()
            elif self.received > self._guard.limits.max_body:
                self._stop_draining()
            return message
        # http.disconnect: the client left (or half-closed), or the answer is ending.
        self._stop_draining()
        if self.holding:
            # The app hears of it once a whole answer is out and hypercorn has settled
            # the connection (the 0.18 workaround, module docstring).
            self._released = trio.Event()
            with trio.move_on_after(HOLD_S):
                await self._released.wait()
        return message

    async def _forward(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.answered = True
            if self._guard.closing() or (
                not self.body_done and self._refuses_body(message["status"])
            ):
                self.close = True
                message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
            # A whole answer (not a stream) goes out whole, even if the client half-closed.
            self.holding = any(name == b"content-length" for name, _ in message["headers"])
            await self._send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            if not (self.body_done or self.close):
                # An early answer: out now; its end once the body is read and discarded.
                if message.get("body"):
                    await self._send({**message, "more_body": True})
                await self._drain()
                message = _END
            self.holding = True
            try:
                await self._send(message)
            finally:
                self.holding = False
                if self._released is not None:
                    self._released.set()
        else:
            await self._send(message)

    def _refuses_body(self, status: int) -> bool:
        declared = self.declared
        return status in REFUSES_BODY or (
            declared is not None and declared > self._guard.limits.max_body
        )

    async def _drain(self) -> None:
        self._wake = trio.Event()
        if self.body_done or self.received > self._guard.limits.max_body:
            return
        with trio.move_on_at(self.deadline):
            await self._wake.wait()

    def _stop_draining(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def discard_body(self) -> None:
        """Read the body to its end (or the client's leaving) and drop it."""
        while True:
            message = await self.receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def answer(self, error: GatewayError) -> None:
        """Answer ``error`` in the app's error format, as an app answer would go."""
        body = self._guard.error_body(self.scope, error)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers.items()),
        ]
        await self._forward(
            {"type": "http.response.start", "status": error.status, "headers": headers}
        )
        await self._forward({"type": "http.response.body", "body": body, "more_body": False})
