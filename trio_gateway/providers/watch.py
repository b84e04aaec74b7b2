"""What a provider's stream is saying, event by event, without translating it. Sans-IO.

The target actor feeds a provider's SSE body through a :class:`StreamWatch` in the
provider's dialect. Out come whole events only (so whatever ends a broken stream
starts on an event boundary), and what they mean:

* **content**: the first one is the stream's first token. Until it, the gateway
  may still fail over; so events that carry nothing yet (OpenAI's role-only first
  chunk, Anthropic's ``message_start``, ``ping``, an empty text block's start,
  keep-alive comments) do not count. The time-to-first-byte budget runs until
  the first content, and inside a stream only content resets the idle timer.
* **the terminator** (``data: [DONE]``, ``event: message_stop``, with or without
  the optional space): the stream is complete. Without it a stream is broken,
  however cleanly the connection closed.
* **an error event** (OpenAI ``data: {"error": …}``, Anthropic ``event: error``):
  before the first content the attempt failed and another target may be tried;
  after it, the event is relayed and the stream is over.
* **a finish reason** (OpenAI ``finish_reason``, Anthropic ``message_delta`` with a
  ``stop_reason``): the answer is whole. A stream that then closes cleanly without its
  terminator is complete all the same (``finished``): the client gets its answer,
  properly ended, as every SDK would have taken it.
* **a malformed event** (data that is not a JSON object): before the first content
  the stream is broken there (that event and anything after it are held back, and
  the attempt fails over); after it, the event is passed on as the provider sent it
  and counted (``malformed``), as a client reading the provider directly would get it.

Every data event is parsed once (orjson, about 0.4 µs for a token chunk): that is
how a malformed event is caught.
"""

from __future__ import annotations

import re
from typing import Any

from trio_gateway import jsonio
from trio_gateway.providers.formats import ApiFormat

MALFORMED = "malformed_event"
#: An event this long without its blank line is not an event: the stream is broken.
MAX_EVENT = 1 << 20

#: A blank line: two line ends in a row, a line end being CRLF, CR or LF. A lone CR
#: must not be the first half of a CRLF (``\r(?!\n)``), or ``data: x\r\n`` would
#: read as a blank line.
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_BOUNDARY = re.compile(_EOL + _EOL)
_OPENAI_CONTENT = (
    "content",
    "tool_calls",
    "function_call",
    "refusal",
    "reasoning_content",
    "reasoning",
)
_ANTHROPIC_CONTENT = frozenset({"content_block_delta", "message_delta"})
_QUIET_BLOCKS = frozenset({"text", "thinking", "redacted_thinking"})


class StreamWatch:
    """One provider stream. See the module docstring.

    ``started``: a content event went by. ``complete``: the terminator did.
    ``finished``: a finish reason did. ``malformed``: malformed events passed on after
    the first content. ``error``: the provider's error type, or :data:`MALFORMED` (a
    malformed event before any content); once set, ``feed`` releases nothing more (an
    error event itself is released, a malformed one not).
    """

    def __init__(self, fmt: ApiFormat) -> None:
        self._classify = _openai if fmt is ApiFormat.OPENAI else _anthropic
        self._pending = b""
        self.started = False
        self.complete = False
        self.finished = False
        self.malformed = 0
        self.error: str | None = None

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The whole events ``data`` completes, and whether any of them carries content.

        Only the new bytes (and the last few of the old, where a boundary may have
        begun) are searched, so a long event arriving in small chunks costs linear
        time. Nothing is released after the terminator or an error.
        """
        if self.error is not None or self.complete:
            return b"", False
        old = len(self._pending)
        buffer = self._pending + data if old else data
        out: list[bytes] = []
        content = False
        start = 0
        for boundary in _BOUNDARY.finditer(buffer, max(0, old - 3)):
            if boundary.end() == len(buffer) and buffer.endswith(b"\r"):
                break  # the CR may be the start of a CRLF still to come
            block = buffer[start : boundary.end()]
            start = boundary.end()
            released, has_content = self._block(block)
            if released:
                out.append(block)
                content = content or has_content
            if self.error is not None or self.complete:
                self._pending = b""
                return b"".join(out), content
        self._pending = buffer[start:]
        if len(self._pending) > MAX_EVENT:
            self.error = MALFORMED
            self._pending = b""
        return b"".join(out), content

    def flush(self) -> tuple[bytes, bool]:
        """The provider closed: a last event missing its blank line still counts."""
        block, self._pending = self._pending, b""
        if self.error is not None or self.complete or not block.strip():
            return b"", False
        released, content = self._block(block)
        if not released:
            return b"", False
        ended = any(
            m.end() == len(block) for m in _BOUNDARY.finditer(block, max(0, len(block) - 4))
        )
        return (block if ended else block + b"\n\n"), content

    def _block(self, block: bytes) -> tuple[bool, bool]:
        """Classify one event; returns (release it, it carries content)."""
        event, data = _fields(block)
        try:
            kind, detail = self._classify(event, data)
        except (TypeError, AttributeError, KeyError, ValueError):
            kind, detail = "malformed", None  # valid JSON, but not the shape of an event
        if kind == "malformed":
            if self.started:
                self.malformed += 1
                return True, False
            self.error = MALFORMED
            return False, False
        if kind == "error":
            self.error = detail or "error"
            return True, True
        if kind == "done":
            self.complete = True
            return True, True
        if kind == "content":
            self.started = True
            if detail == "finish":
                self.finished = True
            return True, True
        return True, False


def _fields(block: bytes) -> tuple[bytes | None, bytes | None]:
    """The ``event`` name and the joined ``data`` of one SSE block (comments skipped)."""
    event = None
    data: list[bytes] = []
    for line in block.splitlines():
        if not line or line[0] == 58:  # b":" comment
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
    return event, (b"\n".join(data) if data else None)


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        value = jsonio.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _openai(event: bytes | None, data: bytes | None) -> tuple[str, str | None]:
    if data is None:
        return "meta", None
    if data == b"[DONE]":
        return "done", None
    chunk = _json(data)
    if chunk is None:
        return "malformed", None
    error = chunk.get("error")
    if error:
        kind = error.get("type") if isinstance(error, dict) else None
        return "error", kind or "error"
    kind = "content" if chunk.get("usage") else "meta"
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return "content", "finish"
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in _OPENAI_CONTENT):
            kind = "content"
    return kind, None


def _anthropic(event: bytes | None, data: bytes | None) -> tuple[str, str | None]:
    payload = None
    if data is not None:
        payload = _json(data)
        if payload is None:
            return "malformed", None
    name = event.decode("ascii", "replace") if event else (payload or {}).get("type")
    if name == "error":
        error = (payload or {}).get("error")
        return "error", (error.get("type") if isinstance(error, dict) else None) or "error"
    if name == "message_stop":
        return "done", None
    if name == "message_delta":
        delta = (payload or {}).get("delta")
        stop = delta.get("stop_reason") if isinstance(delta, dict) else None
        return "content", ("finish" if stop else None)
    if name in _ANTHROPIC_CONTENT:
        return "content", None
    if name == "content_block_start":
        block = (payload or {}).get("content_block") or {}
        return ("meta" if block.get("type") in _QUIET_BLOCKS else "content"), None
    return "meta", None
