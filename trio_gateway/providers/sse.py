"""Server-sent events over bytes: an incremental decoder and an encoder. Sans-IO.

Theory of operation
-------------------
The WHATWG event-stream grammar is line based, but the only thing a consumer acts on
is a *dispatch*, which happens at a blank line. So the decoder works on whole event
blocks rather than on lines or characters:

1. A UTF-8 byte-order mark is dropped once, at the very start of the stream (it may
   arrive split over several ``feed`` calls).
2. Line endings are normalised to LF as the bytes arrive: CRLF becomes LF, a lone CR
   becomes LF. A CR at the end of a chunk is converted at once and remembered, so that
   an LF at the start of the next chunk (the second half of a CRLF) is swallowed.
   Streams without CR (nearly all of them) skip this step entirely.
3. The normalised bytes are appended to a buffer, which is searched with
   ``bytes.find(b"\\n\\n")`` from where the previous search stopped. Each hit ends one
   block; a block is decoded to text once (a block boundary never splits a UTF-8
   sequence) and its few lines are parsed.

Field rules follow the specification: ``:`` starts a comment; ``field: value`` loses
one leading space of the value; a line without a colon is a field with an empty
value; ``data`` lines are joined with LF; ``event`` sets the type (an empty type
means the default, reported here as ``None``); ``id`` sets the last event id, which
persists across events and is ignored when it contains NUL; ``retry`` is honoured
only when it is all ASCII digits; unknown fields are ignored. A block without any
``data`` field dispatches nothing (unless comments were asked for, see below).

Two deliberate extensions, both opt-in or harmless:

- ``SSEDecoder(comments=True)`` also reports comment-only blocks, as events with
  ``comment`` set and empty ``data``. Translators use this to carry keep-alives.
- :meth:`SSEDecoder.flush` treats the end of input as the end of the last block,
  where the specification would discard an unterminated event. A provider that ends
  its stream with ``data: [DONE]`` and no blank line did finish its stream; a caller
  that wants the strict behaviour simply does not call ``flush``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched event.

    ``event`` is ``None`` for the default type ("message"). ``id`` is the last event
    id in force when the event was dispatched. ``retry`` is set only on the event
    whose block carried a valid ``retry`` field. ``comment`` holds the block's comment
    lines (joined with LF) when the decoder reports comments, else ``None``.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None
    comment: str | None = None


class SSEDecoder:
    """Incremental, spec-correct event-stream decoder over bytes.

    ``feed`` accepts any chunking of the byte stream (one byte at a time, or many
    events at once) and returns the events completed by that chunk. Not thread-safe;
    one decoder per stream.
    """

    __slots__ = ("_buf", "_comments", "_cr", "_scan", "_start", "last_event_id", "retry")

    def __init__(self, *, comments: bool = False) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the next search for a blank line may start
        self._cr = False  # the previous chunk ended with CR (already turned into LF)
        self._start = True  # still at the start of the stream: a BOM may follow
        self._comments = comments
        #: The last event id seen (persists across events, as the spec says).
        self.last_event_id: str | None = None
        #: The last valid ``retry`` value seen, in milliseconds.
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Take the next bytes of the stream; return the events they complete."""
        if not data:
            return []
        if self._start:
            data = self._strip_bom(data)
            if not data:
                return []
        if self._cr:
            self._cr = False
            if data[0] == 10:  # the LF of a CRLF split across chunks
                data = data[1:]
                if not data:
                    return []
        if b"\r" in data:
            self._cr = data[-1] == 13
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        buf = self._buf
        if buf:
            buf += data
            pos = buf.find(b"\n\n", self._scan)
            if pos < 0:
                self._scan = len(buf) - 1
                return []
            src: bytes | bytearray = buf
        else:
            pos = data.find(b"\n\n")
            if pos < 0:
                buf += data
                self._scan = len(buf) - 1
                return []
            src = data

        events: list[SSEEvent] = []
        start = 0
        parse = self._parse
        while pos >= 0:
            if pos > start:
                event = parse(src[start:pos].decode("utf-8", "replace"))
                if event is not None:
                    events.append(event)
            start = pos + 2
            pos = src.find(b"\n\n", start)
        if src is buf:
            del buf[:start]
        else:
            buf += src[start:]
        self._scan = max(len(buf) - 1, 0)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of input: dispatch a final block that lacked its blank line, if any."""
        if self._start and self._buf:
            # Only part of a BOM arrived, held back in case the rest followed.
            pending = bytes(self._buf)
            self._buf.clear()
            self._start = False
            return self.feed(pending) + self.flush()
        text = self._buf.decode("utf-8", "replace").strip("\n")
        self._buf.clear()
        self._scan = 0
        if not text:
            return []
        event = self._parse(text)
        return [] if event is None else [event]

    def _strip_bom(self, data: bytes) -> bytes:
        buf = self._buf
        if buf:  # a BOM prefix is waiting; nothing else can be in the buffer yet
            data = bytes(buf) + data
            buf.clear()
        if len(data) < 3 and _BOM.startswith(data):
            buf += data  # wait for the rest of a possible BOM
            return b""
        self._start = False
        return data[3:] if data.startswith(_BOM) else data

    def _parse(self, text: str) -> SSEEvent | None:
        # Fast path: a single data line, the shape of every OpenAI chunk.
        if text.startswith("data:") and "\n" not in text:
            value = text[5:]
            return SSEEvent(None, value[1:] if value[:1] == " " else value, self.last_event_id)
        # Fast path: an event line, then one data line, the shape of every Anthropic event.
        if text.startswith("event:"):
            nl = text.find("\n")
            if text.startswith("data:", nl + 1) and text.find("\n", nl + 1) < 0:
                name = text[6:nl]
                value = text[nl + 6 :]
                return SSEEvent(
                    (name[1:] if name[:1] == " " else name) or None,
                    value[1:] if value[:1] == " " else value,
                    self.last_event_id,
                )
        event: str | None = None
        data: list[str] | None = None
        retry: int | None = None
        comment: list[str] | None = None
        for line in text.split("\n"):
            if not line:
                continue  # a leading blank line: an empty dispatch, nothing to do
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                if data is None:
                    data = [value]
                else:
                    data.append(value)
            elif name == "event":
                event = value or None
            elif not name:
                if self._comments:
                    if comment is None:
                        comment = [value]
                    else:
                        comment.append(value)
            elif name == "id":
                if "\0" not in value:
                    self.last_event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                retry = self.retry = int(value)
        if data is None:
            if comment is None:
                return None
            return SSEEvent(None, "", self.last_event_id, retry, "\n".join(comment))
        return SSEEvent(
            event,
            data[0] if len(data) == 1 else "\n".join(data),
            self.last_event_id,
            retry,
            None if comment is None else "\n".join(comment),
        )


def encode_event(
    data: str | bytes,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """One event block, ready for the wire (LF line endings, blank line at the end).

    ``data`` may contain line breaks (CR, LF or CRLF); each line becomes its own
    ``data:`` field, which a decoder joins back with LF. ``event`` and ``id`` must be
    single lines. Translators on the hot path build their few fixed shapes directly
    as bytes; this is the general, checked form.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    lines: list[str] = []
    if comment is not None:
        lines.extend(":" + c if not c or c[0] == " " else ": " + c for c in _lines(comment))
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event type must be a single line")
        lines.append("event: " + event)
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("an SSE id must be a single line without NUL")
        lines.append("id: " + id)
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    lines.extend("data: " + line for line in _lines(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _lines(text: str) -> list[str]:
    # Only CR, LF and CRLF end SSE lines (str.splitlines knows many more).
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")
