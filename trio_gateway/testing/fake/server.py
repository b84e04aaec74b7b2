"""The fake provider server: a quart-trio app on hypercorn, and its handle.

Ownership and cancellation
--------------------------
:meth:`FakeProvider.serve` owns everything it starts: the listeners and one task
per connection, in its own nursery. It calls ``task_status.started(url)`` once it
listens and serves until cancelled; cancelling it closes every connection at
once (no graceful drain: a fake that hangs must not hold up a test's teardown).
:func:`serve_fake_provider` is the same, for a spec (``serve.py`` runs the fakes a
configuration file declares this way); :func:`open_fake_provider` runs one in its
own nursery for the length of an ``async with`` and yields the handle.

Why own the connections
-----------------------
ASGI cannot say "drop this connection": an app that fails before answering gets a
500 from hypercorn. Closing or resetting a connection (``close``, ``reset``,
``cut_stream``) needs the socket. So the fake runs hypercorn's own per-connection
server (``hypercorn.trio.tcp_server.TCPServer``, what ``hypercorn.trio.serve``
runs for each accepted connection) over listeners it owns, handing it each
stream wrapped in a :class:`_Connection` that the fault code can
:meth:`~_Connection.abort`. A request finds its connection by the client
address in its ASGI scope. Once aborted, writes fail as if the peer had gone,
which hypercorn already handles by closing up quietly.

Requests
--------
Every request outside ``/_fake/`` is recorded (:class:`RecordedRequest`), then
the :class:`~trio_gateway.testing.fake.faults.FaultPlan` decides what to do to
it, then (unless a fault answers instead) it is checked and answered in the
dialect of its path (:mod:`.openai` or :mod:`.anthropic`). A request's
``outcome`` tells a test how it ended: answered, aborted by a fault, or cut
short because the client went away (the connection closed or the request was
cancelled first).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from trio_gateway import jsonio
from trio_gateway.errors import GatewayError, NotFound, ValidationFailed
from trio_gateway.testing.fake import anthropic, openai, responses
from trio_gateway.testing.fake.content import (
    Event,
    Rejected,
    answer,
    encode_event,
    malformed,
)
from trio_gateway.testing.fake.faults import FaultPlan, FaultStatistics, RequestInfo
from trio_gateway.testing.fake.spec import (
    DEFAULT_RETRY_AFTER,
    FakeProviderSpec,
    Fault,
    FaultKind,
    fault_from_json,
    fault_to_json,
    faults_from_json,
)
from trio_gateway.web.http import json_response, read_json
from trio_gateway.web.server import ConnectionLimits, guard, hypercorn_config

log = logging.getLogger("trio_gateway.fake")

CONTROL = "/_fake"
MAX_BODY = 32 << 20
MAX_CONTROL_BODY = 1 << 20
SSE = "text/event-stream; charset=utf-8"
OPENAI_FAMILIES = ("gpt-", "o1", "o3", "o4", "text-embedding-", "chatgpt-", "davinci", "babbage")
ANTHROPIC_FAMILY = "claude"


class Outcome(enum.Enum):
    """How a recorded request ended (so far)."""

    PENDING = "pending"
    #: The answer was sent whole (an error answer and an in-stream error event included).
    COMPLETED = "completed"
    #: A fault closed or reset the connection instead (``close``, ``reset``, ``cut_stream``).
    ABORTED = "aborted"
    #: The client went away first (or the fake was stopped) while it was pending.
    DISCONNECTED = "disconnected"


@attrs.define(eq=False)
class RecordedRequest:
    """One request as the fake received it. ``headers`` are lower-cased, in order.

    ``time`` is ``trio.current_time()`` on arrival. ``status`` is the status sent
    (``None`` while pending, or when no response was sent). ``faults`` are the
    kinds of the faults that fired on it.
    """

    index: int
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    json: Any
    time: float
    connection: tuple[str, int]
    status: int | None = None
    outcome: Outcome = Outcome.PENDING
    faults: tuple[FaultKind, ...] = ()
    _done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case); repeated headers joined with ``, ``."""
        name = name.lower()
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    @property
    def finished(self) -> bool:
        return self.outcome is not Outcome.PENDING

    async def wait_finished(self) -> Outcome:
        """Wait until the request is answered, aborted or abandoned; return how."""
        await self._done.wait()
        return self.outcome

    def to_json(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in self.headers:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return {
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": self.body.decode("utf-8", "replace"),
            "json": self.json,
            "time": self.time,
            "connection": f"{self.connection[0]}:{self.connection[1]}",
            "status": self.status,
            "outcome": self.outcome.value,
            "faults": [kind.value for kind in self.faults],
        }


@attrs.frozen
class FakeProviderStatistics:
    """A snapshot: requests by outcome since the last reset, connections, faults."""

    name: str
    url: str | None
    requests: int
    pending: int
    completed: int
    aborted: int
    disconnected: int
    connections_open: int
    connections_total: int
    faults: tuple[FaultStatistics, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "requests": self.requests,
            "pending": self.pending,
            "completed": self.completed,
            "aborted": self.aborted,
            "disconnected": self.disconnected,
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "faults": [
                {"fault": fault_to_json(f.fault), "matched": f.matched, "fired": f.fired}
                for f in self.faults
            ],
        }


class _Connection(trio.abc.HalfCloseableStream):
    """An accepted TCP stream that fault code can abort under hypercorn's feet."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.socket = stream.socket  # hypercorn reads the addresses from it
        self.aborted = False
        self.pending: set[RecordedRequest] = set()

    def abort(self, *, reset: bool) -> None:
        """Close the socket now: a FIN, or with ``reset`` an RST (``SO_LINGER`` 0)."""
        if self.aborted:
            return
        self.aborted = True
        if reset:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.socket.close()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.aborted:
            raise trio.BrokenResourceError("connection aborted by a fault")
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


@attrs.frozen
class _Endpoint:
    dialect: str
    kind: str
    pattern: re.Pattern[str]
    method: str


_ENDPOINTS = tuple(
    _Endpoint(dialect, kind, re.compile(pattern), method)
    for dialect, kind, method, pattern in (
        ("openai", "chat", "POST", r"/v1/chat/completions"),
        ("openai", "embeddings", "POST", r"/v1/embeddings"),
        ("openai", "chat", "POST", r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions"),
        ("openai", "embeddings", "POST", r"/openai/deployments/(?P<deployment>[^/]+)/embeddings"),
        ("openai", "responses", "POST", r"/v1/responses"),
        ("openai", "responses", "POST", r"/openai/v1/responses"),  # Azure's v1 API
        ("anthropic", "messages", "POST", r"/v1/messages"),
        ("anthropic", "count_tokens", "POST", r"/v1/messages/count_tokens"),
        ("any", "models", "GET", r"/v1/models"),
        ("any", "model", "GET", r"/v1/models/(?P<model>.+)"),
    )
)


def _match(method: str, path: str) -> tuple[_Endpoint | None, dict[str, str]]:
    for endpoint in _ENDPOINTS:
        if (m := endpoint.pattern.fullmatch(path)) and endpoint.method == method:
            return endpoint, m.groupdict()
    return None, {}


def _dialect(endpoint: _Endpoint | None, headers: Mapping[str, str]) -> str:
    if endpoint is not None and endpoint.dialect != "any":
        return endpoint.dialect
    return "anthropic" if "anthropic-version" in headers or "x-api-key" in headers else "openai"


class _Streamed:
    """A response whose body generator finishes the record itself."""

    def __init__(self, response: Response) -> None:
        self.response = response


@attrs.define(eq=False)
class FakeProvider:
    """A running (or about to run) fake provider, and the handle tests hold.

    Build it with :func:`open_fake_provider` or the ``fake_provider`` pytest
    fixture, or ``FakeProvider.of(spec)`` and ``await nursery.start(fake.serve)``.
    Every method is synchronous and safe to call from any task of the run.
    """

    spec: FakeProviderSpec
    url: str | None = None
    _plan: FaultPlan = attrs.field(factory=FaultPlan)
    _requests: collections.deque[RecordedRequest] = attrs.field(factory=collections.deque)
    _count: int = 0
    _arrivals: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    _connections: dict[tuple[str, int], _Connection] = attrs.field(factory=dict)
    _connections_total: int = 0
    _models: frozenset[str] = frozenset()

    @classmethod
    def of(cls, spec: FakeProviderSpec) -> FakeProvider:
        return cls(
            spec=spec,
            plan=FaultPlan.of(spec.faults, now=0.0, seed=spec.seed),
            requests=collections.deque(maxlen=spec.keep_requests),
            models=frozenset(spec.models),
        )

    # --- the test's side ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received since the last reset (the latest ``keep_requests``)."""
        return list(self._requests)

    def requests_since(self, index: int) -> list[RecordedRequest]:
        """The requests after the one numbered ``index`` still in the log, oldest first.

        Cheap when few are new (it reads the log from its end): for a watcher that
        collects requests as they come, beyond what ``keep_requests`` keeps.
        """
        fresh = []
        for record in reversed(self._requests):
            if record.index <= index:
                break
            fresh.append(record)
        fresh.reverse()
        return fresh

    @property
    def faults(self) -> tuple[Fault, ...]:
        return self._plan.faults

    def set_faults(self, *faults: Fault | Iterable[Fault]) -> None:
        """Replace the faults in effect; windows and flapping start now.

        ``set_faults(a, b)`` and ``set_faults([a, b])`` are the same; ``set_faults()``
        clears them.
        """
        self._plan.replace(_flatten(faults), now=_now())

    def add_fault(self, fault: Fault) -> None:
        """Add ``fault`` after the others; its window and flapping start now."""
        self._plan.add(fault, now=_now())

    def clear_faults(self) -> None:
        self._plan.replace((), now=_now())

    def clear_requests(self) -> None:
        self._requests.clear()
        self._count = 0

    def reset(self) -> None:
        """Back to how it started: the spec's faults (fresh counters), no requests."""
        self._plan = FaultPlan.of(self.spec.faults, now=_now(), seed=self.spec.seed)
        self.clear_requests()

    async def wait_requests(self, count: int = 1) -> RecordedRequest:
        """Wait until ``count`` requests have arrived since the last reset; return that one.

        The returned request may already have left the log if more than
        ``keep_requests`` arrived since.
        """
        while self._count < count:
            await self._arrivals.park()
        return self._nth(count)

    def statistics(self) -> FakeProviderStatistics:
        outcomes = collections.Counter(r.outcome for r in self._requests)
        return FakeProviderStatistics(
            name=self.spec.name,
            url=self.url,
            requests=self._count,
            pending=outcomes[Outcome.PENDING],
            completed=outcomes[Outcome.COMPLETED],
            aborted=outcomes[Outcome.ABORTED],
            disconnected=outcomes[Outcome.DISCONNECTED],
            connections_open=len(self._connections),
            connections_total=self._connections_total,
            faults=self._plan.statistics(),
        )

    def _nth(self, count: int) -> RecordedRequest:
        offset = count - (self._count - len(self._requests)) - 1
        return self._requests[max(0, offset)]

    # --- serving ------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``spec.listen``, ``task_status.started(url)``, serve until cancelled.

        Owns its listeners and one task per connection. Cancelling it closes every
        connection at once, without draining: requests still pending end
        ``DISCONNECTED``. Binding errors (``OSError``) are raised before ``started``.
        """
        host, port = self.spec.address
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        self.url = f"http://{_host(bound[0])}:{bound[1]}"
        self._plan.replace(self._plan.faults, now=_now())
        config = _hypercorn_config()
        app = wrap_app(
            guard(self._app(), ConnectionLimits(MAX_BODY, math.inf)),
            config.wsgi_max_body_size,
            "asgi",
        )
        context = WorkerContext(None)

        async def handle(stream: trio.SocketStream) -> None:
            connection = _Connection(stream)
            peer = tuple(stream.socket.getpeername()[:2])
            self._connections[peer] = connection
            self._connections_total += 1
            try:
                await TCPServer(app, config, context, {}, connection).run()  # type: ignore[arg-type]
            finally:
                # A client port is reused at once after a reset or close fault: a new
                # connection from the same peer may already stand in this one's place.
                if self._connections.get(peer) is connection:
                    del self._connections[peer]
                for record in list(connection.pending):
                    self._finish(record, Outcome.DISCONNECTED)
                stream.socket.close()  # synchronous: also right when cancelled

        log.debug("fake provider listening", extra={"fields": {"name": self.name, "url": self.url}})
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, handle, listeners)
                task_status.started(self.url)
        finally:
            for listener in listeners:
                listener.socket.close()

    def _app(self) -> QuartTrio:
        app = QuartTrio("trio_gateway.fake")
        app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, RESPONSE_TIMEOUT=None, BODY_TIMEOUT=None)
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        _add_control_routes(app, self)

        @app.route("/", defaults={"path": ""}, methods=methods)
        @app.route("/<path:path>", methods=methods)
        async def provider(path: str) -> Response:
            if request.path.startswith(CONTROL + "/"):
                return _control_error(NotFound(f"no control route {request.path}"))
            return await self._provider_request()

        return app

    def _record(self, body: bytes, parsed: Any) -> RecordedRequest:
        scope = request.scope
        self._count += 1
        record = RecordedRequest(
            index=self._count,
            method=request.method,
            path=request.path,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=tuple(
                (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]
            ),
            body=body,
            json=parsed,
            time=_now(),
            connection=tuple(scope.get("client") or ("", 0)),  # type: ignore[arg-type]
        )
        self._requests.append(record)
        self._arrivals.unpark_all()
        return record

    def _finish(self, record: RecordedRequest, outcome: Outcome, status: int | None = None) -> None:
        if record.finished:
            return
        record.outcome = outcome
        if status is not None:
            record.status = status
        connection = self._connections.get(record.connection)
        if connection is not None:
            connection.pending.discard(record)
        record._done.set()

    async def _provider_request(self) -> Response:
        try:
            body = await request.get_data(cache=False)
            too_large = False
        except RequestEntityTooLarge:
            body, too_large = b"", True
        try:
            parsed: Any = jsonio.loads(body) if body else None
        except ValueError:  # jsonio: also for nesting too deep to read
            parsed = None
        record = self._record(body, parsed)
        connection = self._connections.get(record.connection)
        if connection is not None:
            connection.pending.add(record)
        headers = dict(record.headers)
        endpoint, params = _match(record.method, record.path)
        dialect = _dialect(endpoint, headers)
        streaming = endpoint is not None and endpoint.kind in ("chat", "messages", "responses")
        model = params.get("deployment")
        if isinstance(parsed, dict) and isinstance(parsed.get("model"), str):
            model = model or parsed["model"]
        info = RequestInfo(
            path=record.path,
            model=model,
            stream=streaming and isinstance(parsed, dict) and parsed.get("stream") is True,
        )
        decision = self._plan.decide(info, now=_now())
        record.faults = tuple(fault.kind for fault in decision.fired)
        handed_off = False
        try:
            if decision.delay:
                await trio.sleep(decision.delay)
            if decision.response is not None:
                response = await self._fault_response(decision.response, dialect, record)
            elif too_large:
                response = self._rejected(Rejected(413, "request too large"), dialect, record)
            else:
                response = self._answer(endpoint, params, dialect, record, info)
            if isinstance(response, _Streamed):
                handed_off = True
                return response.response
            if not record.finished:
                self._finish(record, Outcome.COMPLETED, response.status_code)
            return response
        except Exception:
            log.exception("fake provider failed", extra={"fields": {"path": record.path}})
            error = self._error_response(dialect, record, 500, None)
            self._finish(record, Outcome.COMPLETED, 500)
            return error
        finally:
            if not handed_off:
                self._finish(record, Outcome.DISCONNECTED)

    # --- answers ------------------------------------------------------------------

    def _headers(self, dialect: str, record: RecordedRequest) -> dict[str, str]:
        request_id = "request-id" if dialect == "anthropic" else "x-request-id"
        return {request_id: f"req_fake{record.index:06d}", "x-fake-provider": self.spec.name}

    def _serves(self, model: str, dialect: str) -> bool:
        if self._models and model not in self._models:
            return False
        if dialect == "anthropic":
            return not model.startswith(OPENAI_FAMILIES)
        return not model.startswith(ANTHROPIC_FAMILY)

    def _listed(self, dialect: str) -> list[str]:
        return [m for m in self.spec.models if self._serves(m, dialect)]

    def _rejected(self, exc: Rejected, dialect: str, record: RecordedRequest) -> Response:
        dialect_module = anthropic if dialect == "anthropic" else openai
        return json_response(
            dialect_module.rejected_body(exc), exc.status, self._headers(dialect, record)
        )

    def _error_response(
        self,
        dialect: str,
        record: RecordedRequest,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        all_headers = {**self._headers(dialect, record), **(headers or {})}
        if isinstance(body, str):
            all_headers.setdefault("content-type", "text/plain; charset=utf-8")
            return Response(body, status, all_headers)
        if body is None:
            body = (anthropic if dialect == "anthropic" else openai).error_body(status)
        return json_response(body, status, all_headers)

    def _answer(
        self,
        endpoint: _Endpoint | None,
        params: Mapping[str, str],
        dialect: str,
        record: RecordedRequest,
        info: RequestInfo,
    ) -> Response | _Streamed:
        headers = dict(record.headers)
        try:
            if dialect == "anthropic":
                anthropic.check_headers(headers, self.spec.api_key)
            else:
                openai.check_auth(headers, self.spec.api_key)
            if endpoint is None:
                raise Rejected(
                    404,
                    f"Invalid URL ({record.method} {record.path})"
                    if dialect == "openai"
                    else "Not Found",
                )
            body = record.json
            if record.method == "POST" and body is None:
                raise Rejected(400, openai.INVALID_JSON if dialect == "openai" else _BAD_JSON)
            return self._answer_endpoint(endpoint, params, dialect, record, info)
        except Rejected as exc:
            return self._rejected(exc, dialect, record)

    def _answer_endpoint(
        self,
        endpoint: _Endpoint,
        params: Mapping[str, str],
        dialect: str,
        record: RecordedRequest,
        info: RequestInfo,
    ) -> Response | _Streamed:
        headers = self._headers(dialect, record)
        body = record.json
        served = self._served(dialect)
        if endpoint.kind == "models":
            module = anthropic if dialect == "anthropic" else openai
            return json_response(module.models_list(self._listed(dialect)), 200, headers)
        if endpoint.kind == "model":
            model = params["model"]
            if dialect == "anthropic":
                if not served(model):
                    raise Rejected(404, f"model: {model}")
                return json_response(anthropic.model_object(model), 200, headers)
            if not served(model):
                raise openai.model_not_found(model)
            return json_response(openai.model_object(model), 200, headers)
        if endpoint.kind == "embeddings":
            result = openai.embeddings(body, served=served, deployment=params.get("deployment"))
            return json_response(result, 200, headers)
        if endpoint.kind == "count_tokens":
            prompt, _ = anthropic.parse_messages(body, served=served, count_only=True)
            return json_response(anthropic.count_tokens_response(prompt), 200, headers)
        created = int(time.time())
        if endpoint.kind == "responses":
            prompt, stream = responses.parse(body, served=served)
            responder = responses.Responder(
                body, prompt, answer(prompt), id=f"fake{record.index:06d}", created=created
            )
            if not stream:
                return json_response(responder.whole(), 200, headers)
            events, terminator = responder.events()
            return self._stream(record, headers, events, terminator, info, responder.error_event)
        if endpoint.kind == "chat":
            prompt, stream, include_usage = openai.parse_chat(
                body, served=served, deployment=params.get("deployment")
            )
            ans = answer(prompt)
            id = f"chatcmpl-fake{record.index:06d}"
            if not stream:
                return json_response(
                    openai.completion(prompt, ans, id=id, created=created), 200, headers
                )
            events = openai.stream_events(
                prompt, ans, id=id, created=created, include_usage=include_usage
            )
            return self._stream(record, headers, events, openai.TERMINATOR, info, _errors(openai))
        prompt, stream = anthropic.parse_messages(body, served=served)
        ans = answer(prompt)
        id = f"msg_fake{record.index:06d}"
        if not stream:
            return json_response(anthropic.message(prompt, ans, id=id), 200, headers)
        events = anthropic.stream_events(prompt, ans, id=id)
        return self._stream(record, headers, events, anthropic.TERMINATOR, info, _errors(anthropic))

    def _served(self, dialect: str) -> Callable[[str], bool]:
        return lambda model: self._serves(model, dialect)

    def _stream(
        self,
        record: RecordedRequest,
        headers: dict[str, str],
        events: list[Event],
        terminator: Event,
        info: RequestInfo,
        error_event: Callable[[int, Any, int], Event],
    ) -> _Streamed:
        """Stream ``events`` then ``terminator``, bent by the stream faults that fire.

        ``error_event(status, body, position)`` is the API's in-stream error for an
        ``error_event`` fault that fires after ``position`` events.
        """
        shape = self._plan.decide_stream(info, now=_now())
        record.faults += tuple(fault.kind for fault in shape.fired)
        connection = self._connections.get(record.connection)
        last = len(events)
        stall_at = _clamp(shape.stall_at, last)
        malformed_at = _clamp(shape.malformed_at, last)
        end_at = _clamp(shape.end_at, last)
        end = shape.end

        async def body() -> AsyncIterator[bytes]:
            outcome = Outcome.DISCONNECTED
            try:
                if shape.first_token_delay:
                    await trio.sleep(shape.first_token_delay)
                for position in range(last + 1):
                    if position == stall_at and shape.stall is not None:
                        await trio.sleep(shape.stall.seconds or 0.0)
                    if position == malformed_at:
                        yield encode_event(
                            malformed(events[position] if position < last else terminator)
                        )
                    if position == end_at and end is not None:
                        if end.kind is FaultKind.CUT_STREAM and connection is not None:
                            connection.abort(reset=False)
                            outcome = Outcome.ABORTED
                            return
                        yield encode_event(error_event(end.status or 529, end.body, position))
                        outcome = Outcome.COMPLETED
                        return
                    if position < last:
                        yield encode_event(events[position])
                if end is None or end.kind is not FaultKind.NO_TERMINATOR:
                    yield encode_event(terminator)
                outcome = Outcome.COMPLETED
            finally:
                self._finish(record, outcome, 200)

        response = Response(
            body(), 200, {**headers, "content-type": SSE, "cache-control": "no-cache"}
        )
        return _Streamed(response)

    async def _fault_response(
        self, fault: Fault, dialect: str, record: RecordedRequest
    ) -> Response | _Streamed:
        match fault.kind:
            case FaultKind.ERROR | FaultKind.RATE_LIMIT:
                status = fault.status or 429
                retry_after = fault.retry_after
                if fault.kind is FaultKind.RATE_LIMIT and retry_after is None:
                    retry_after = DEFAULT_RETRY_AFTER
                headers = dict(fault.headers)
                if retry_after is not None:
                    headers.setdefault("retry-after", str(math.ceil(retry_after)))
                    headers.setdefault("retry-after-ms", str(round(retry_after * 1000)))
                return self._error_response(dialect, record, status, fault.body, headers)
            case FaultKind.HANG:
                await trio.sleep_forever()
            case FaultKind.CLOSE | FaultKind.RESET:
                connection = self._connections.get(record.connection)
                if connection is not None:
                    connection.abort(reset=fault.kind is FaultKind.RESET)
                self._finish(record, Outcome.ABORTED)
                return Response(b"", 500)  # never reaches the client
            case FaultKind.HANG_AFTER_HEADERS:
                return _Streamed(
                    Response(
                        self._silence(record),
                        200,
                        {**self._headers(dialect, record), "content-type": _content_type(record)},
                    )
                )
        raise AssertionError(f"not a response fault: {fault.kind}")

    async def _silence(self, record: RecordedRequest) -> AsyncIterator[bytes]:
        try:
            await trio.sleep_forever()
            yield b""  # pragma: no cover  (makes this an async generator)
        finally:
            self._finish(record, Outcome.DISCONNECTED, 200)


_BAD_JSON = "There was an error parsing the body of your request."


def _errors(module: Any) -> Callable[[int, Any, int], Event]:
    """A dialect's in-stream error event, whose place in the stream does not matter."""
    return lambda status, body, _position: module.error_event(status, body)


def _content_type(record: RecordedRequest) -> str:
    stream = isinstance(record.json, dict) and record.json.get("stream") is True
    return SSE if stream else "application/json"


def _clamp(position: int | None, last: int) -> int | None:
    return None if position is None else min(position, last)


def _flatten(faults: Iterable[Fault | Iterable[Fault]]) -> list[Fault]:
    flat: list[Fault] = []
    for item in faults:
        if isinstance(item, Fault):
            flat.append(item)
        else:
            flat.extend(item)
    return flat


def _now() -> float:
    return trio.current_time()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _hypercorn_config() -> HypercornConfig:
    return hypercorn_config(errorlog=log)


# --- the control API ------------------------------------------------------------------


def _control_error(error: GatewayError) -> Response:
    body: dict[str, Any] = {"type": error.type, "message": error.message}
    if error.details:
        body["details"] = [{"loc": p.loc, "msg": p.msg} for p in error.details]
    return json_response({"error": body}, error.status, error.headers)


def _add_control_routes(app: QuartTrio, fake: FakeProvider) -> None:
    """``/_fake/*``: the same controls as the Python handle, for any language."""

    @app.errorhandler(GatewayError)
    async def gateway_error(error: GatewayError) -> Response:
        return _control_error(error)

    def faults() -> Response:
        return json_response({"faults": [fault_to_json(f) for f in fake.faults]})

    @app.get(f"{CONTROL}/faults")
    async def get_faults() -> Response:
        return faults()

    @app.put(f"{CONTROL}/faults")
    async def put_faults() -> Response:
        data = await read_json(MAX_CONTROL_BODY)
        if isinstance(data, dict) and set(data) == {"faults"}:
            data = data["faults"]
        if not isinstance(data, list):
            raise ValidationFailed.single("$", 'must be a list of faults or {"faults": [...]}')
        fake.set_faults(faults_from_json(data))
        return faults()

    @app.post(f"{CONTROL}/faults")
    async def post_fault() -> Response:
        fake.add_fault(fault_from_json(await read_json(MAX_CONTROL_BODY), loc="$"))
        response = faults()
        response.status_code = 201
        return response

    @app.delete(f"{CONTROL}/faults")
    async def delete_faults() -> Response:
        fake.clear_faults()
        return faults()

    @app.get(f"{CONTROL}/requests")
    async def get_requests() -> Response:
        raw = request.args.get("since", "0")
        if not raw.isdigit():
            raise ValidationFailed.single("since", "must be a request index (an integer >= 0)")
        since = int(raw)
        records = [r.to_json() for r in fake.requests if r.index > since]
        return json_response({"requests": records, "total": fake.statistics().requests})

    @app.delete(f"{CONTROL}/requests")
    async def delete_requests() -> Response:
        fake.clear_requests()
        return json_response({"requests": [], "total": 0})

    @app.post(f"{CONTROL}/reset")
    async def reset() -> Response:
        fake.reset()
        return json_response(fake.statistics().to_json())

    @app.get(f"{CONTROL}/stats")
    async def stats() -> Response:
        return json_response(fake.statistics().to_json())


# --- entry points -----------------------------------------------------------------------


async def serve_fake_provider(
    spec: FakeProviderSpec, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve a fake provider for ``spec`` until cancelled; ``task_status.started(url)``."""
    await FakeProvider.of(spec).serve(task_status=task_status)


@asynccontextmanager
async def open_fake_provider(
    spec: FakeProviderSpec | None = None, **fields: Any
) -> AsyncIterator[FakeProvider]:
    """Run a fake provider for the ``async with`` block and yield its handle.

    ``spec`` or the fields of one: ``open_fake_provider(faults=[Fault.hang()])``
    (``name`` defaults to ``"fake"``, ``listen`` to port 0 on 127.0.0.1).
    """
    if spec is None:
        spec = FakeProviderSpec(**{"name": "fake", **fields})
    elif fields:
        spec = attrs.evolve(spec, **fields)
    fake = FakeProvider.of(spec)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()
