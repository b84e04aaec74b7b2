"""HTTP transports for the target actors: one connection pool per origin, shared.

Theory of operation
-------------------
Building an httpx transport the default way loads the CA bundle into a new SSL
context: about 23 ms of CPU and most of a megabyte each, on the event loop. So the
process builds one verifying SSL context, once, in a worker thread, the first time
an ``https`` origin needs it, and every ``https`` transport shares it (a transport
is then ~0.1 ms). An ``http`` origin never uses TLS: its transport gets a context
that verifies nothing and so could connect nowhere, built in microseconds. Targets
with the same origin (scheme, host, port) share one transport and so its
connection pool: a thousand targets on one provider hold one pool, not a thousand.

The actors send through the transport itself, not an ``httpx2.AsyncClient``: a
client's per-request layers (auth, redirects, cookies, default headers, event
hooks) would cost about 0.1 ms of CPU per request for nothing the gateway uses.

A transport is acquired when an actor is made and released when that actor has
finished for good; the last release closes it, in the pool's own nursery. Each
actor bounds its own requests in flight, so the pools are not bounded.

Every transport is wrapped in a
:class:`~trio_gateway.runtime.injection.FaultTransport`: a request that carries an
injected fault (a gateway's fault injection on live traffic) gets it there, in front
of the provider call; any other goes straight through.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx2
import trio

from trio_gateway.runtime.injection import FaultTransport

CONNECT_TIMEOUT_S = 10.0
#: httpx2's own timeouts are a safety net only: the actors' budgets cancel first.
SAFETY_TIMEOUT_S = 3600.0
KEEPALIVE_PER_ORIGIN = 256
CLOSE_TIMEOUT_S = 5.0

Origin = tuple[str, str, int | None]

#: The verifying context, built once per process (see the module docstring).
_verifying: ssl.SSLContext | None = None
#: For plain-HTTP origins: TLS is never used, and this context could not verify anyone.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


async def verifying_context() -> ssl.SSLContext:
    global _verifying
    if _verifying is None:
        context = await trio.to_thread.run_sync(httpx2.create_ssl_context)
        _verifying = _verifying or context
    return _verifying


def origin_of(url: str) -> Origin:
    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host, parsed.port


@attrs.define
class _Shared:
    transport: httpx2.AsyncBaseTransport
    users: int = 0


class ClientPool:
    """Shared transports by origin. Open with :meth:`open`; it owns their closing."""

    def __init__(
        self, nursery: trio.Nursery, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self._nursery = nursery
        self._transport = transport
        self._clients: dict[Origin, _Shared] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, transport: httpx2.AsyncBaseTransport | None = None
    ) -> AsyncIterator[ClientPool]:
        async with trio.open_nursery() as nursery:
            pool = cls(nursery, transport)
            try:
                yield pool
            finally:
                pool._close_all()

    def acquire_nowait(self, url: str) -> httpx2.AsyncBaseTransport | None:
        """:meth:`acquire` when it need not wait (``None``: an ``https`` origin whose TLS
        context is not loaded yet)."""
        key = origin_of(url)
        if key not in self._clients:
            if key[0] == "https" and _verifying is None:
                return None
            self._clients[key] = _Shared(
                self._new_transport(_verifying if key[0] == "https" else _NO_TLS)  # type: ignore[arg-type]
            )
        shared = self._clients[key]
        shared.users += 1
        return shared.transport

    async def acquire(self, url: str) -> httpx2.AsyncBaseTransport:
        """The shared transport for ``url``'s origin; :meth:`release` it when done."""
        transport = self.acquire_nowait(url)
        if transport is None:  # an https origin, before the TLS context is loaded
            await verifying_context()
            transport = self.acquire_nowait(url)
            assert transport is not None
        return transport

    def release(self, url: str) -> None:
        key = origin_of(url)
        shared = self._clients.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del self._clients[key]
            self._nursery.start_soon(_close, shared.transport)

    def statistics(self) -> dict[str, int]:
        return {"clients": len(self._clients)}

    def _new_transport(self, context: ssl.SSLContext) -> httpx2.AsyncBaseTransport:
        transport = self._transport or httpx2.AsyncHTTPTransport(
            verify=context,
            limits=httpx2.Limits(
                max_connections=None, max_keepalive_connections=KEEPALIVE_PER_ORIGIN
            ),
            trust_env=False,
        )
        return FaultTransport(transport)

    def _close_all(self) -> None:
        for shared in self._clients.values():
            self._nursery.start_soon(_close, shared.transport)
        self._clients.clear()


async def _close(transport: httpx2.AsyncBaseTransport) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
        await transport.aclose()
