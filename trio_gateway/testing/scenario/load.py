"""The scenario's clients: requests through the gateway, and what each one saw.

Each request is judged as an application would: a whole answer must be a 2xx with
a body in the client's dialect; a stream must end with its terminator (``data:
[DONE]`` / ``message_stop``), or with an error event (a *clean* error), never by a
cut or a silent end. Every request ends in exactly one :class:`Result`, bounded by
the load's ``timeout`` (a request still running then is ``client_timeout``: hung).

Error kinds (``Result.kind``): ``http_<status>``, ``stream_error`` (an error event),
``stream_cut`` (the connection broke mid-stream), ``stream_unterminated`` (a clean
end without the terminator), ``invalid_response``, ``connect_error``,
``read_error`` (the connection closed before an answer), ``client_timeout``.
``ok`` and ``abandoned`` (the client left on purpose) are not errors.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway.providers.sse import SSEDecoder
from trio_gateway.testing.scenario.model import Api, Load

OK = "ok"
ABANDONED = "abandoned"
PATHS = {Api.OPENAI: "/v1/chat/completions", Api.ANTHROPIC: "/v1/messages"}
DEFAULT_BODIES: Mapping[Api, Mapping[str, Any]] = {
    Api.OPENAI: {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Tell me about failover in one line."}],
    },
    Api.ANTHROPIC: {
        "model": "claude-3-5-haiku-20241022",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Tell me about failover in one line."}],
    },
}
#: Requests in a row that take no time at all: in virtual time, a load that never ends.
ZERO_TIME_LIMIT = 2000


class LoadError(Exception):
    """The load cannot run as declared."""


@attrs.frozen
class Attempt:
    """One attempt of the gateway's trail: target (by name), outcome, milliseconds."""

    target: str
    outcome: str
    ms: float


@attrs.define(slots=True)
class Result:
    """What one client request saw. Times are seconds since the run started."""

    index: int
    start: float
    stream: bool
    end: float = 0.0
    kind: str = OK
    status: int | None = None
    #: The target that answered (or, for an error, the one tried last), by name.
    target: str | None = None
    attempts: tuple[Attempt, ...] = ()
    #: Seconds from the start to the whole answer (or to a stream's first content).
    first_byte: float | None = None
    #: A stream carried content to the client.
    content: bool = False
    #: A stream read to its end: it ended with its terminator or an error event.
    terminated: bool | None = None
    #: Events whose data was not JSON (passed on by the gateway).
    malformed: int = 0

    @property
    def ok(self) -> bool:
        return self.kind == OK

    @property
    def abandoned(self) -> bool:
        return self.kind == ABANDONED

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def added_latency(self) -> float | None:
        """What the gateway added: time to the answer minus the answering attempt's own."""
        if not self.ok or self.first_byte is None or not self.attempts:
            return None
        return max(0.0, self.first_byte - self.attempts[-1].ms / 1000)


def parse_trail(header: str | None, names: Callable[[str], str]) -> tuple[Attempt, ...]:
    """``X-Gateway-Attempts`` (``id;outcome=503;ms=12, ...``) as attempts, targets by name."""
    attempts = []
    for item in (header or "").split(","):
        parts = item.strip().split(";")
        if not parts[0]:
            continue
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        try:
            ms = float(fields.get("ms", "0"))
        except ValueError:
            ms = 0.0
        attempts.append(Attempt(names(parts[0]), fields.get("outcome", "?"), ms))
    return tuple(attempts)


class Client:
    """Sends the load's requests through one gateway and judges each answer."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        load: Load,
        *,
        names: Callable[[str], str],
        t0: float,
    ) -> None:
        self.http = http
        self.load = load
        self.names = names
        self.t0 = t0
        self.path = PATHS[load.api]
        self.body = dict(load.request if load.request is not None else DEFAULT_BODIES[load.api])
        self.body.pop("stream", None)
        self.headers = {"anthropic-version": "2023-06-01"} if load.api is Api.ANTHROPIC else {}

    def now(self) -> float:
        return trio.current_time() - self.t0

    async def request(self, index: int, *, stream: bool, abandon: bool) -> Result:
        """One request, bounded by the load's timeout; never raises for what the server does."""
        result = Result(index=index, start=self.now(), stream=stream)
        body = {**self.body, "stream": True} if stream else self.body
        with trio.move_on_after(self.load.timeout) as bound:
            try:
                if abandon and not stream:
                    with trio.move_on_after(self.load.disconnect_after) as left:
                        await self._send(result, body, abandon=False)
                    if left.cancelled_caught:
                        result.kind = ABANDONED
                else:
                    await self._send(result, body, abandon=abandon)
            except httpx2.ConnectError:
                result.kind = "connect_error"
            except httpx2.TransportError:
                if result.status is None:
                    result.kind = "read_error"
                elif stream and result.status == 200:
                    result.kind, result.terminated = "stream_cut", False
                else:
                    result.kind = "read_error"
        if bound.cancelled_caught:
            result.kind = "client_timeout"
            if stream and result.status == 200:
                result.terminated = False
        result.end = self.now()
        return result

    async def _send(self, result: Result, body: Mapping[str, Any], *, abandon: bool) -> None:
        async with self.http.stream("POST", self.path, json=body, headers=self.headers) as resp:
            result.status = resp.status_code
            result.target = self.names(t) if (t := resp.headers.get("x-selected-target")) else None
            result.attempts = parse_trail(resp.headers.get("x-gateway-attempts"), self.names)
            if resp.status_code != 200:
                await resp.aread()
                result.kind = f"http_{resp.status_code}"
                return
            if result.stream and resp.headers.get("content-type", "").startswith(
                "text/event-stream"
            ):
                await self._read_stream(result, resp, abandon=abandon)
                return
            raw = await resp.aread()
            result.first_byte = self.now() - result.start
            if result.stream or not _whole_answer(raw, self.load.api):
                result.kind = "invalid_response"

    async def _read_stream(self, result: Result, resp: httpx2.Response, *, abandon: bool) -> None:
        decoder = SSEDecoder()
        api = self.load.api
        async for chunk in resp.aiter_bytes():
            for event in decoder.feed(chunk):
                what = _classify(event.event, event.data, api)
                if what == "malformed":
                    result.malformed += 1
                elif what == "content" and not result.content:
                    result.content = True
                    result.first_byte = self.now() - result.start
                    if abandon:
                        result.kind = ABANDONED
                        return  # leaving the block closes the connection: the client is gone
                elif what == "terminator":
                    result.terminated = True
                    return
                elif what == "error":
                    result.terminated = True
                    result.kind = "stream_error"
                    return
        result.terminated = False
        result.kind = "stream_unterminated"


def _classify(event: str | None, data: str, api: Api) -> str:
    """``content``, ``terminator``, ``error``, ``malformed`` or ``meta`` for one SSE event."""
    if api is Api.OPENAI:
        if data == "[DONE]":
            return "terminator"
        try:
            parsed = json.loads(data)
        except ValueError:
            return "malformed"
        if not isinstance(parsed, dict):
            return "malformed"
        if "error" in parsed:
            return "error"
        for choice in parsed.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                return "content"
        return "meta"
    if event == "message_stop":
        return "terminator"
    if event == "error":
        return "error"
    try:
        parsed = json.loads(data)
    except ValueError:
        return "malformed"
    if not isinstance(parsed, dict):
        return "malformed"
    if parsed.get("type") == "error":
        return "error"
    return "content" if event == "content_block_delta" else "meta"


def _whole_answer(raw: bytes, api: Api) -> bool:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(parsed, dict):
        return False
    if api is Api.OPENAI:
        choices = parsed.get("choices")
        return bool(choices) and isinstance(choices[0], dict) and "message" in choices[0]
    return isinstance(parsed.get("content"), list)


# --- driving the load ----------------------------------------------------------------------


async def drive(
    client: Client,
    until: float,
    record: Callable[[Result], None],
) -> None:
    """Run the load until ``until`` (run time); return when every request has ended."""
    load = client.load
    rng = random.Random(load.seed)
    counter = iter(range(1, 1 << 62))

    def next_request() -> tuple[int, bool, bool]:
        stream = rng.random() < load.stream
        abandon = load.disconnect > 0 and rng.random() < load.disconnect
        return next(counter), stream, abandon

    async with trio.open_nursery() as nursery:
        if load.concurrency is not None:
            zero_time = [0]
            for _ in range(load.concurrency):
                nursery.start_soon(_loop, client, until, next_request, record, zero_time)
        else:
            assert load.rate is not None
            limiter = trio.CapacityLimiter(load.max_in_flight)
            first = client.now()
            for n in range(1 << 62):
                at = first + n / load.rate
                if at >= until:
                    break
                await trio.sleep_until(client.t0 + at)
                token = object()
                await limiter.acquire_on_behalf_of(token)
                nursery.start_soon(_one, client, next_request(), record, limiter, token)


async def _loop(
    client: Client,
    until: float,
    next_request: Callable[[], tuple[int, bool, bool]],
    record: Callable[[Result], None],
    zero_time: list[int],
) -> None:
    pause = client.load.pause
    while client.now() < until:
        index, stream, abandon = next_request()
        result = await client.request(index, stream=stream, abandon=abandon)
        record(result)
        if pause:
            await trio.sleep(pause)
        elif result.end <= result.start:
            zero_time[0] += 1
            if zero_time[0] > ZERO_TIME_LIMIT:
                raise LoadError(
                    f"{ZERO_TIME_LIMIT} requests took no time at all: in virtual time this "
                    "load never ends; give the fakes a latency fault, or the load a pause "
                    "or a rate"
                )
        else:
            zero_time[0] = 0


async def _one(
    client: Client,
    request: tuple[int, bool, bool],
    record: Callable[[Result], None],
    limiter: trio.CapacityLimiter,
    token: object,
) -> None:
    try:
        index, stream, abandon = request
        record(await client.request(index, stream=stream, abandon=abandon))
    finally:
        limiter.release_on_behalf_of(token)
