"""Fault injection on live traffic: the Trio + httpx shell around :mod:`trio_gateway.core.injection`.

Theory of operation
-------------------
* :class:`Injection`: one enabled gateway's injection in this process. The runtime
  builds one when the gateway's ``fault_injection`` setting changes and puts it in
  the route table; the one it replaces is :meth:`~Injection.switch_off`\\ ed at once.
  It owns the *switch*: every wait a fault imposes (a hang, a latency, a stall, a
  slow first token) ends when the switch is thrown or the setting expires, and the
  attempt then carries on as if nothing had been injected (a hung
  attempt calls the provider after all). That is the kill switch: ``DELETE
  .../faults`` ends the injected waits of requests in flight, and new requests get
  none.
* :class:`RequestFaults`: what the proxy knows of one client request (its key, its
  endpoint, the fault it named); the dispatcher asks it for each attempt's
  :class:`ArmedFault`, which rides in the :class:`~trio_gateway.runtime.target.Job`
  and, through the httpx request's ``extensions``, to the transport.
* :class:`FaultTransport` wraps each shared per-origin client's transport (see
  :mod:`trio_gateway.runtime.clients`). A request without an armed fault goes straight
  through. With one, the fault acts *in front of* the provider call, so the gateway's
  budgets, failover and health react exactly as to a real failure: an error or a rate
  limit answers without calling the provider; a hang waits (until the attempt's budget
  gives up, or the switch); ``close`` and ``reset`` raise what httpx raises for them;
  ``hang_after_headers`` answers ``200`` and then nothing. Stream faults wrap the
  provider's real streamed body (:class:`~trio_gateway.core.injection.StreamBend`).

Cancellation: nothing here holds a cancel scope across a ``yield``; every wait is a
``move_on_at`` around a ``trio.Event`` wait inside a plain ``await``. The attempt's own cancel
scope (its budget, an abandoned job) cancels any of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import httpx2
import trio

from trio_gateway import jsonio
from trio_gateway.config.faults import DEFAULT_RETRY_AFTER, FaultInjection, FaultKind
from trio_gateway.core.faults import PLAIN, RequestInfo
from trio_gateway.core.injection import (
    CUT,
    HEADER_NAME,
    INJECTED_MESSAGE,
    STOP,
    AttemptFaults,
    HeaderFault,
    Injector,
    InjectorStatistics,
    Pause,
    StreamBend,
    check_named,
    parse_header,
)
from trio_gateway.errors import PermissionDenied
from trio_gateway.providers.formats import Api, error_body

#: The key of an :class:`ArmedFault` in an httpx request's ``extensions``.
EXTENSION = "trio_gateway.fault"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"


class Injection:
    """One gateway's fault injection in this process, and its switch. See the module docstring.

    Built (with :meth:`start`) and switched off by the runtime's reconciliation;
    read by the request path. Holds no task.
    """

    def __init__(self, setting: FaultInjection, injector: Injector) -> None:
        self.setting = setting
        self.injector = injector
        self._off = False
        #: Set (and replaced) whenever the switch or the expiry changes: waits look again.
        self._changed = trio.Event()

    @classmethod
    def start(cls, setting: FaultInjection) -> Injection:
        """In force from now; ``window`` and ``flapping`` count from the setting's ``since``."""
        now, wall = trio.current_time(), time.time()
        origin = now - max(0.0, wall - setting.since.timestamp()) if setting.since else now
        return cls(setting, Injector.of(setting, origin=origin, expires=_expires(setting)))

    def continues(self, setting: FaultInjection) -> bool:
        """Is ``setting`` this one with its faults unchanged (its counters go on)?"""
        return self.setting.since == setting.since and setting.same_clock(self.setting)

    def adopt(self, setting: FaultInjection) -> None:
        """Take the switches of ``setting`` (``header_faults``, ``expires_at``): see :meth:`continues`."""
        self.setting = self.injector.setting = setting
        self.injector.expires = _expires(setting)
        self._wake()

    @property
    def expires(self) -> float:
        return self.injector.expires

    def switch_off(self) -> None:
        """Stop injecting, at once: waits in flight end and their attempts carry on."""
        self._off = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def off(self) -> bool:
        return self._off

    def lifted(self) -> bool:
        """Switched off, or past its ``expires_at``: faults in flight stop acting."""
        return self._off or trio.current_time() >= self.expires

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (``inf``: for ever), or less: until switched off or expired."""
        until = trio.current_time() + seconds
        while not self._off:
            deadline = min(until, self.expires)
            if trio.current_time() >= deadline:
                return
            with trio.move_on_at(deadline):
                await self._changed.wait()

    def statistics(self) -> InjectorStatistics:
        return self.injector.statistics()


def _expires(setting: FaultInjection) -> float:
    """``expires_at`` on Trio's clock."""
    if setting.expires_at is None:
        return math.inf
    return trio.current_time() + (setting.expires_at.timestamp() - time.time())


@attrs.frozen
class RequestFaults:
    """One client request's side of its gateway's injection: see :meth:`attempt`."""

    injection: Injection
    named: HeaderFault | None
    #: The API endpoint called (``/v1/chat/completions``): what a fault's ``path`` selects.
    path: str
    key_id: str | None
    key_name: str | None

    def attempt(
        self, target: str, model: str, stream: bool, number: int, api: Api
    ) -> ArmedFault | None:
        """The faults of attempt ``number`` (from 1) on ``target`` (whose API is ``api``)."""
        injection = self.injection
        if injection.off:
            return None
        info = RequestInfo(self.path, model, stream, self.key_id, self.key_name, target, number)
        faults = injection.injector.decide(info, self.named, trio.current_time())
        return None if faults is None else ArmedFault(faults, injection, api, stream)


def named_fault(injection: Injection | None, header: str, gateway: str) -> HeaderFault:
    """The fault a request names with ``X-Gateway-Fault``, if its gateway takes one.

    Refused (``403``) unless the gateway's injection is enabled, takes header faults and
    has not expired; a value that names no valid fault is a ``400``.
    """
    if injection is None:
        raise PermissionDenied(
            f"fault injection is not enabled for gateway {gateway!r}: the {HEADER_NAME} "
            "header is refused (an admin enables it: PUT /api/v1/gateways/{id}/faults)"
        )
    if not injection.setting.header_faults:
        raise PermissionDenied(
            f"gateway {gateway!r} does not take faults from the {HEADER_NAME} header "
            "(its fault injection has 'header_faults': false)"
        )
    if injection.lifted():
        raise PermissionDenied(
            f"the fault injection of gateway {gateway!r} has expired: the {HEADER_NAME} "
            "header is refused"
        )
    return parse_header(header)


def request_faults(
    injection: Injection | None,
    named: HeaderFault | None,
    *,
    path: str,
    key_id: str | None,
    key_name: str | None,
    stream: bool,
    targets: Iterable[str],
) -> RequestFaults | None:
    """What the dispatcher needs for a request of a gateway (``None``: no injection)."""
    if named is not None:
        check_named(named, stream=stream, targets=targets)
    if injection is None or injection.lifted():
        return None
    return RequestFaults(injection, named, path, key_id, key_name)


def check_fault(
    injection: Injection | None, target: str, model: str | None, stream: bool, api: Api
) -> ArmedFault | None:
    """The faults of one of the gateway's own checks of ``target`` (no key, no path)."""
    if injection is None or injection.off:
        return None
    info = RequestInfo(None, model, stream, target=target)
    faults = injection.injector.decide(info, None, trio.current_time())
    return None if faults is None else ArmedFault(faults, injection, api, stream)


@attrs.define(eq=False)
class ArmedFault:
    """One attempt's faults, ready to act on its provider call (in ``extensions``)."""

    faults: AttemptFaults
    injection: Injection
    #: The provider's API: error bodies and error events are written in its dialect.
    api: Api
    stream: bool

    def describe(self) -> str | None:
        return self.faults.describe()

    async def handle(
        self, request: httpx2.Request, inner: httpx2.AsyncBaseTransport
    ) -> httpx2.Response:
        injection = self.injection
        faults = self.faults
        if faults.delay and not injection.lifted():
            await injection.wait(faults.delay)
        fault = faults.response
        if fault is not None and not injection.lifted():
            match fault.kind:
                case FaultKind.ERROR | FaultKind.RATE_LIMIT:
                    return self._error(request)
                case FaultKind.HANG:
                    await injection.wait(math.inf)  # then, switched off: the real call
                case FaultKind.CLOSE:
                    raise httpx2.RemoteProtocolError(
                        "Server disconnected without sending a response.", request=request
                    )
                case FaultKind.RESET:
                    raise httpx2.ReadError("[Errno 104] Connection reset by peer", request=request)
                case FaultKind.HANG_AFTER_HEADERS:
                    content_type = SSE_TYPE if self.stream else JSON_TYPE
                    return httpx2.Response(
                        200,
                        headers=[("content-type", content_type)],
                        stream=_Silence(injection, inner, request),
                        request=request,
                    )
        response = await inner.handle_async_request(request)
        if (
            self.stream
            and 200 <= response.status_code < 300
            and "content-encoding" not in response.headers
            and not injection.lifted()
        ):
            shape = faults.shape(trio.current_time())
            if shape is not PLAIN:
                return httpx2.Response(
                    response.status_code,
                    headers=response.headers,
                    stream=_BentStream(response, StreamBend(shape, self.api), injection),
                    extensions=response.extensions,
                    request=request,
                )
        return response

    def _error(self, request: httpx2.Request) -> httpx2.Response:
        """An ``error`` or ``rate_limit`` answer, as the fakes write it, in the provider's dialect."""
        fault = self.faults.response
        assert fault is not None
        status = fault.status or 429
        retry_after = fault.retry_after
        if fault.kind is FaultKind.RATE_LIMIT and retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER
        headers = {name.lower(): value for name, value in fault.headers.items()}
        if retry_after is not None:
            headers.setdefault("retry-after", str(math.ceil(retry_after)))
            headers.setdefault("retry-after-ms", str(round(retry_after * 1000)))
        if isinstance(fault.body, str):
            headers.setdefault("content-type", "text/plain; charset=utf-8")
            content = fault.body.encode()
        else:
            headers.setdefault("content-type", JSON_TYPE)
            content = (
                error_body(self.api.format, status, None, f"{INJECTED_MESSAGE} (HTTP {status})")
                if fault.body is None
                else jsonio.dumpb(fault.body)
            )
        return httpx2.Response(status, headers=headers, content=content, request=request)


class FaultTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport: a request carrying an :class:`ArmedFault` gets its faults.

    Without one (every request when no gateway injects) it costs a dictionary lookup.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        armed = request.extensions.pop(EXTENSION, None)
        if armed is None:
            return await self._inner.handle_async_request(request)
        return await armed.handle(request, self._inner)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BentStream(httpx2.AsyncByteStream):
    """A provider's streamed body with its stream faults applied."""

    def __init__(self, response: httpx2.Response, bend: StreamBend, injection: Injection) -> None:
        self._response = response
        self._bend = bend
        self._injection = injection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        bend, injection = self._bend, self._injection
        async for chunk in self._response.stream:
            if bend.done or injection.lifted():
                if rest := bend.release():
                    yield rest
                yield chunk
                continue
            for step in bend.feed(chunk):
                if isinstance(step, bytes):
                    yield step
                elif await self._act(step):
                    return
        if not bend.done and not injection.lifted():
            for step in bend.finish():
                if isinstance(step, bytes):
                    yield step
                elif await self._act(step):
                    return
        elif rest := bend.release():
            yield rest

    async def _act(self, step: Any) -> bool:
        """Take a step that is not bytes; ``True``: the body ends here."""
        if isinstance(step, Pause):
            await self._injection.wait(step.seconds)
            return False
        if step is CUT:
            raise httpx2.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                "(incomplete chunked read)"
            )
        assert step is STOP
        return True

    async def aclose(self) -> None:
        await self._response.aclose()


class _Silence(httpx2.AsyncByteStream):
    """``hang_after_headers``: no body until switched off; then the provider's own, if it can."""

    def __init__(
        self, injection: Injection, inner: httpx2.AsyncBaseTransport, request: httpx2.Request
    ) -> None:
        self._injection = injection
        self._inner = inner
        self._request = request
        self._real: httpx2.Response | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._injection.wait(math.inf)
        # Switched off: the headers are sent, so only a plain success can follow them.
        self._real = real = await self._inner.handle_async_request(self._request)
        if not 200 <= real.status_code < 300 or "content-encoding" in real.headers:
            raise httpx2.ReadError("the connection broke (an injected hang after the headers)")
        async for chunk in real.stream:
            yield chunk

    async def aclose(self) -> None:
        if self._real is not None:
            await self._real.aclose()
