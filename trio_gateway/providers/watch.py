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

A Responses API stream (``StreamWatch(Api.RESPONSES)``) is typed events, named by
their ``type``:

* content: any ``*.delta`` with a non-empty ``delta`` (text, refusal, reasoning,
  function-call arguments, audio...), ``response.output_item.done``, and
  ``response.output_item.added`` for an item other than a message or reasoning (a
  function call, a built-in tool call: the model has committed to it). Lifecycle
  events (``response.created``, ``response.in_progress``, ``response.queued``),
  empty message or reasoning items and ``response.content_part.added`` carry
  nothing yet.
* terminators: ``response.completed`` and ``response.incomplete`` (a proper end,
  for instance at ``max_output_tokens``); ``data: [DONE]`` is not one. There is no
  finish reason before them: the terminator carries the whole response, and a
  Responses client (the SDKs' ``get_final_response``) has no answer without it, so a
  Responses stream that closes without one is never ``finished``.
* errors: ``response.failed`` (its ``response.error.code``) and ``error``.

Every data event is parsed once (orjson, about 0.4 µs for a token chunk): that is
how a malformed event is caught, and where the provider's token usage and model are
read (:meth:`StreamWatch.usage`; :mod:`trio_gateway.providers.usage`).

**Events for a translator** (``events=True``; chat completions and Messages): a
translator that takes parsed events (``feed_events``) is given the events the watch
released, as ``(name, payload, block)``: the ``event`` field (``None`` without one),
the ``data`` parsed as a JSON object, and the event's bytes (ending with its blank
line). So each event is parsed once, not once here and once more in the
translator. The payload is ``None`` for anything else (no data, a keep-alive, ``data:
[DONE]``, data that could not be read or has not the shape of an event): the
translator then reads the block itself, as it would have without the watch. They
collect in :attr:`StreamWatch.events` until the caller takes them.

**Usage the client did not ask for** (``hide_usage``, chat completions only): the
gateway asks an OpenAI-dialect provider for its usage (``stream_options.include_usage``)
even when the client did not, to count tokens. The provider then adds ``"usage": null``
to every chunk and a last chunk with no choices and the usage; with ``hide_usage`` the
watch releases neither (the chunks without their ``usage`` member, the usage chunk not
at all), so the client gets the stream it would have got without the gateway.
"""

from __future__ import annotations

import re
from typing import Any

from trio_gateway import jsonio
from trio_gateway.providers.formats import Api, ApiFormat
from trio_gateway.providers.usage import Usage, tokens

MALFORMED = "malformed_event"
#: An event this long without its blank line is not an event: the stream is broken.
MAX_EVENT = 1 << 20

#: A blank line: two line ends in a row, a line end being CRLF, CR or LF. A lone CR
#: must not be the first half of a CRLF (``\r(?!\n)``), or ``data: x\r\n`` would
#: read as a blank line.
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_BOUNDARY = re.compile(_EOL + _EOL)
#: A ``"usage": null`` member of a chat chunk (as a member after another, or as the
#: first one). Inside a JSON string a quote is escaped, so this matches members only.
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
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
    error event itself is released, a malformed one not). ``input_tokens``,
    ``output_tokens``, ``cached_tokens``, ``model``: what the provider reported so
    far (:meth:`usage`).
    """

    def __init__(
        self, fmt: ApiFormat | Api, *, hide_usage: bool = False, events: bool = False
    ) -> None:
        """``fmt``: the provider's dialect (chat completions or Messages), or an :class:`Api`.

        ``hide_usage``, ``events``: see the module docstring (``hide_usage``: chat
        completions only).
        """
        self._classify = _CLASSIFIERS[fmt]
        if events and self._classify is _responses:
            raise ValueError("parsed events are kept for chat completions and Messages only")
        self._pending = b""
        #: The released events, parsed (``events=True``; ``None`` otherwise).
        self.events: list[tuple[str | None, dict[str, Any] | None, bytes]] | None = (
            [] if events else None
        )
        #: The JSON object the classifier parsed of the event at hand.
        self._payload: dict[str, Any] | None = None
        self.started = False
        self.complete = False
        self.finished = False
        self.malformed = 0
        self.error: str | None = None
        self.hide_usage = hide_usage and self._classify is _openai
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.model: str | None = None

    def usage(self) -> Usage | None:
        """The provider's usage and model as far as the stream went (``None``: nothing)."""
        if self.input_tokens is None and self.output_tokens is None and self.model is None:
            return None
        return Usage(self.input_tokens, self.output_tokens, self.model, self.cached_tokens)

    def _tokens(self, usage: Any) -> None:
        given, taken, cached = tokens(usage)
        if given is not None:
            self.input_tokens = given
        if taken is not None:
            self.output_tokens = taken
        if cached is not None:
            self.cached_tokens = cached

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
                out.append(_strip_usage(block) if self.hide_usage else block)
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
        if not any(
            m.end() == len(block) for m in _BOUNDARY.finditer(block, max(0, len(block) - 4))
        ):
            block += b"\n\n"
        released, content = self._block(block)
        if not released:
            return b"", False
        return (_strip_usage(block) if self.hide_usage else block), content

    def _block(self, block: bytes) -> tuple[bool, bool]:
        """Classify one event; returns (release it, it carries content)."""
        event, data = _fields(block)
        self._payload = None
        released, content = self._judge(event, data)
        if released and self.events is not None:
            name = None if event is None else event.decode("utf-8", "replace")
            self.events.append((name, self._payload, block))
        return released, content

    def _judge(self, event: bytes | None, data: bytes | None) -> tuple[bool, bool]:
        """(release it, it carries content) of one event."""
        try:
            kind, detail = self._classify(self, event, data)
        except (TypeError, AttributeError, KeyError, ValueError):
            kind, detail = "malformed", None  # valid JSON, but not the shape of an event
            self._payload = None  # the translator reads it itself
        if kind == "usage":
            if self.hide_usage:
                return False, False  # asked for by the gateway, not the client
            kind = "content"
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


def _strip_usage(block: bytes) -> bytes:
    return _USAGE_NULL.sub(b"", block) if b'"usage"' in block else block


def _openai(watch: StreamWatch, event: bytes | None, data: bytes | None) -> tuple[str, str | None]:
    if data is None:
        return "meta", None
    if data == b"[DONE]":
        return "done", None
    chunk = watch._payload = _json(data)
    if chunk is None:
        return "malformed", None
    error = chunk.get("error")
    if error:
        kind = error.get("type") if isinstance(error, dict) else None
        return "error", kind or "error"
    if watch.model is None and isinstance(model := chunk.get("model"), str):
        watch.model = model
    kind = "meta"
    if usage := chunk.get("usage"):
        watch._tokens(usage)
        if not chunk.get("choices"):
            return "usage", None
        kind = "content"
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            return "content", "finish"
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in _OPENAI_CONTENT):
            kind = "content"
    return kind, None


def _anthropic(
    watch: StreamWatch, event: bytes | None, data: bytes | None
) -> tuple[str, str | None]:
    payload = None
    if data is not None:
        payload = watch._payload = _json(data)
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
        if payload and "usage" in payload:
            watch._tokens(payload["usage"])
        return "content", ("finish" if stop else None)
    if name == "message_start":
        message = (payload or {}).get("message")
        if isinstance(message, dict):
            watch._tokens(message.get("usage"))
            if isinstance(model := message.get("model"), str):
                watch.model = model
        return "meta", None
    if name in _ANTHROPIC_CONTENT:
        return "content", None
    if name == "content_block_start":
        block = (payload or {}).get("content_block") or {}
        return ("meta" if block.get("type") in _QUIET_BLOCKS else "content"), None
    return "meta", None


#: Responses items that carry nothing until their deltas come.
_QUIET_ITEMS = frozenset({"message", "reasoning"})
_RESPONSES_DONE = frozenset({"response.completed", "response.incomplete"})


def _responses(
    watch: StreamWatch, event: bytes | None, data: bytes | None
) -> tuple[str, str | None]:
    if data is None:
        return "meta", None
    if data == b"[DONE]":
        return "meta", None  # not a Responses terminator; response.completed is
    payload = _json(data)
    if payload is None:
        return "malformed", None
    kind = payload.get("type")
    if not isinstance(kind, str):
        kind = event.decode("ascii", "replace") if event else None
    if kind is None:
        error = payload.get("error")
        if error:  # a chat-style error chunk from a server that mixes the two
            return "error", (error.get("type") if isinstance(error, dict) else None) or "error"
        return "meta", None
    if kind.endswith(".delta"):
        return ("content" if payload.get("delta") else "meta"), None
    if kind in _RESPONSES_DONE:
        response = payload.get("response")
        if isinstance(response, dict):
            watch._tokens(response.get("usage"))
            if isinstance(model := response.get("model"), str):
                watch.model = model
        return "done", None
    if kind == "response.output_item.added":
        item = payload["item"]
        return ("meta" if item.get("type") in _QUIET_ITEMS else "content"), None
    if kind == "response.output_item.done":
        return "content", None
    if kind == "response.failed":
        error = (payload.get("response") or {}).get("error")
        code = error.get("code") if isinstance(error, dict) else None
        return "error", code or "server_error"
    if kind == "error":
        error = payload.get("error")
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
        else:
            code = payload.get("code")
        return "error", code or "error"
    return "meta", None


_CLASSIFIERS = {
    ApiFormat.OPENAI: _openai,
    ApiFormat.ANTHROPIC: _anthropic,
    Api.CHAT: _openai,
    Api.MESSAGES: _anthropic,
    Api.RESPONSES: _responses,
}
