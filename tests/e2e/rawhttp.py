"""A raw HTTP/1.1 client connection for conformance tests: bytes out, h11-parsed answers in.

The client writes exactly the bytes a test asks for (a head without its body,
half a body, two requests at once, a half-close...) and parses what comes back
with h11, one response at a time, keeping whatever follows for the next one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
import h11
import trio


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        """The answer says ``Connection: close``."""
        return "close" in self.headers.get("connection", "").lower()

    def json(self) -> Any:
        return json.loads(self.body)


def head(
    method: str,
    path: str,
    *,
    length: int | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A request head: ``Content-Length: length`` when given, then ``headers``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def request(
    method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A whole request with a ``Content-Length`` body."""
    return head(method, path, length=len(body), headers=headers) + body


class RawConnection:
    """One client TCP connection to ``url`` (``http://host:port``)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = b""

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def half_close(self) -> None:
        """Shut down our sending side (a FIN); we can still read."""
        await self.stream.send_eof()

    async def answer(self, method: str = "POST") -> Answer | None:
        """The next response, or ``None`` if the server closed the connection first."""
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        parser.send(h11.EndOfMessage())
        if self._buffer:  # (empty data would tell h11 the connection closed)
            parser.receive_data(self._buffer)
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await self._receive()
                parser.receive_data(data)
                if not data and response is None:
                    return None
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                self._buffer = parser.trailing_data[0]
                return Answer(
                    response.status_code,
                    {k.decode().lower(): v.decode() for k, v in response.headers},
                    bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def closed(self) -> bool:
        """Read to the end: ``True`` once the server closed, having sent nothing more."""
        extra = self._buffer
        while data := await self._receive():
            extra += data
        assert not extra, f"unexpected bytes before the close: {extra[:200]!r}"
        return True

    async def _receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(1 << 16))
        except trio.BrokenResourceError:  # a reset: closed as well
            return b""

    async def aclose(self) -> None:
        await self.stream.aclose()
