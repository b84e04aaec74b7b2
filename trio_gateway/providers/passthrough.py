"""Same API on both sides: forward the provider's SSE events untouched, whole events only.

The only work is to hold back a trailing partial event, so that whatever ends a
broken stream (:meth:`PassthroughStream.fail`) starts on an event boundary and
the client's parser sees a clean error event, not half a JSON object.
"""

from __future__ import annotations

from trio_gateway.providers.formats import ApiFormat, stream_error_event

_BOUNDARIES = ((b"\n\n", 2), (b"\r\n\r\n", 4), (b"\r\r", 2))
_ERROR_MARKERS = (b"\nevent: error", b'\ndata: {"error"', b'\ndata:{"error"')


class PassthroughStream:
    def __init__(self, fmt: ApiFormat) -> None:
        self._format = fmt
        self._pending = b""
        self.errored = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        cut = max((buffer.rfind(sep) + n if sep in buffer else 0) for sep, n in _BOUNDARIES)
        out, self._pending = buffer[:cut], buffer[cut:]
        if out and not self.errored:
            probe = b"\n" + out
            self.errored = any(marker in probe for marker in _ERROR_MARKERS)
        return out

    def finish(self) -> bytes:
        """The provider's stream ended complete: release whatever is left."""
        out, self._pending = self._pending, b""
        return out

    def fail(self, type: str, message: str) -> bytes:
        """A protocol-correct error event to end a broken stream (none if one was relayed)."""
        self._pending = b""
        if self.errored:
            return b""
        self.errored = True
        return stream_error_event(self._format, type, message)
