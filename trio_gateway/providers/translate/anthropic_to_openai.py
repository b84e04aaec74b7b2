"""Anthropic Messages client, OpenAI chat-completions provider. Sans-IO.

The provider is any OpenAI-dialect target: ``openai``, ``azure-openai`` or an
``openai-compatible`` server (vLLM, Ollama, Groq, DeepSeek...). Requests go
Anthropic → OpenAI; responses, errors and streams come back OpenAI → Anthropic.
``docs/translation.md`` lists what is mapped and dropped; the reasoning for each
choice sits next to the code that makes it.
"""

from __future__ import annotations

import logging
from typing import Any

from trio_gateway.errors import UpstreamError, UpstreamProtocolError
from trio_gateway.providers.formats import ApiFormat, stream_error_event
from trio_gateway.providers.sse import SSEDecoder, SSEEvent
from trio_gateway.providers.translate._common import (
    ParsedEvents,
    anthropic_usage,
    debug,
    dumpb,
    dumps,
    fail,
    loads,
    loads_object,
    log_dropped,
    new_id,
    parse_error,
    stream_failure,
    translate_error,
)

__all__ = ["AnthropicToOpenAI", "AnthropicToOpenAIStream"]

log = logging.getLogger(__name__)

_HANDLED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "output_config",
        "output_format",
    }
)

#: Provider kinds that are OpenAI's own API: they take ``max_completion_tokens``
#: (reasoning models refuse ``max_tokens``) and at most four stop sequences.
_OPENAI_PROPER = frozenset({"openai", "azure-openai"})

_STOP_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


class AnthropicToOpenAI:
    """One Anthropic-format request served by an OpenAI-dialect target."""

    def __init__(self, *, kind: str, request_id: str | None) -> None:
        self.kind = kind
        self.request_id = request_id or new_id()
        #: The client's model name, used when the provider's answer lacks one.
        self.model = ""

    # --- request -------------------------------------------------------------------

    def request(self, body: dict) -> dict:
        try:
            return self._request(body)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A shape the checks above did not foresee: still the client's to fix.
            raise fail("$", f"the request could not be translated ({exc!r})") from exc

    def _request(self, body: dict) -> dict:
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise fail("messages", "must be a non-empty array of messages")
        openai_proper = self.kind in _OPENAI_PROPER

        out: dict[str, Any] = {"model": model, "messages": _messages(body.get("system"), messages)}

        max_tokens = body.get("max_tokens")
        if type(max_tokens) is int and max_tokens > 0:
            out["max_completion_tokens" if openai_proper else "max_tokens"] = max_tokens
        for key in ("temperature", "top_p"):
            value = body.get(key)
            if type(value) is int or type(value) is float:
                out[key] = value
        stops = body.get("stop_sequences")
        if isinstance(stops, list) and stops:
            if openai_proper and len(stops) > 4:  # OpenAI's limit
                debug(log, "kept the first 4 stop sequences", stop_sequences=stops)
                stops = stops[:4]
            out["stop"] = stops
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
            out["user"] = metadata["user_id"]
        if body.get("stream") is True:
            out["stream"] = True
            # An Anthropic client always gets usage, so always ask for it.
            out["stream_options"] = {"include_usage": True}

        _tools(body, out)

        config = body.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
        if (
            isinstance(fmt, dict)
            and fmt.get("type") == "json_schema"
            and isinstance(fmt.get("schema"), dict)
        ):
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": fmt["schema"]},
            }
        if isinstance(config, dict) and config.keys() - {"format"}:
            debug(log, "dropped output_config fields", fields=sorted(config.keys() - {"format"}))

        log_dropped(log, body, _HANDLED, "dropped request fields the OpenAI dialect does not take")
        return out

    # --- response ------------------------------------------------------------------

    def response(self, body: dict) -> dict:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UpstreamProtocolError("OpenAI response has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise UpstreamProtocolError("OpenAI response choice has no message")
        content: list[dict] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        text = message.get("content")
        if isinstance(text, list):  # a few compatible servers answer with parts
            text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            content.append({"type": "text", "text": refusal})
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for j, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                content.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{self.request_id}_{j}",
                        "name": function.get("name") or "",
                        "input": loads_object(function.get("arguments")),
                    }
                )
        usage = body.get("usage")
        return {
            "id": _msg_id(body.get("id"), self.request_id),
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or self.model,
            "content": content,
            "stop_reason": _stop_reason(
                choice.get("finish_reason"), any(b["type"] == "tool_use" for b in content)
            ),
            "stop_sequence": None,
            "usage": anthropic_usage(usage if isinstance(usage, dict) else {}),
        }

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return translate_error(ApiFormat.ANTHROPIC, status, body, status_map={})

    def stream(self) -> AnthropicToOpenAIStream:
        return AnthropicToOpenAIStream(self)


def _msg_id(provider_id: Any, request_id: str) -> str:
    return "msg_" + (provider_id if isinstance(provider_id, str) and provider_id else request_id)


def _stop_reason(finish: Any, used_tools: bool) -> str:
    """OpenAI's finish reason as Anthropic's stop reason.

    A turn that called tools stops with ``tool_use`` even when the provider said
    ``stop`` (several compatible servers do): an Anthropic agent loop keys on it.
    OpenAI does not say whether a stop sequence ended the turn, so ``stop`` is
    always ``end_turn``.
    """
    if finish == "length":
        return "max_tokens"
    if used_tools:
        return "tool_use"
    return _STOP_REASON.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"


# --- messages ------------------------------------------------------------------------


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(
            b.get("text") or "" for b in system if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _messages(system: Any, messages: list) -> list[dict]:
    """Anthropic system + messages as OpenAI messages.

    - ``system`` (a string or text blocks, joined by newlines) is the first message.
    - A user turn's ``tool_result`` blocks become ``tool`` messages, first and in
      order; the rest of the turn follows as a user message. Images in tool results
      (OpenAI tool messages hold only text) go to that user message.
    - An assistant turn becomes one message: its text, and ``tool_use`` blocks as
      ``tool_calls`` (``input`` serialised as the ``arguments`` string). Thinking
      blocks are Anthropic's own (signed) and are not sent to another provider.
    - Every tool use must be answered by the next user turn, and a result must answer
      a tool use of the turn before; Anthropic itself refuses anything else, so a
      :class:`TranslationError` says so instead of a provider 400.
    """
    out: list[dict] = []
    text = _system_text(system)
    if text:
        out.append({"role": "system", "content": text})
    pending: list[str] = []
    for i, m in enumerate(messages):
        loc = f"messages[{i}]"
        if not isinstance(m, dict):
            raise fail(loc, "must be an object")
        role = m.get("role")
        content = m.get("content")
        if role == "user":
            _user(content, f"{loc}.content", pending, out)
            if pending:
                raise fail(
                    loc, f"tool uses {pending} of the preceding assistant turn have no tool_result"
                )
        elif role == "assistant":
            if pending:
                raise fail(
                    loc, f"tool uses {pending} of the preceding assistant turn have no tool_result"
                )
            out.append(_assistant(content, f"{loc}.content", pending))
        else:
            raise fail(f"{loc}.role", f"role must be 'user' or 'assistant', not {role!r}")
    if pending:
        raise fail(
            f"messages[{len(messages) - 1}]",
            f"tool uses {pending} of the last assistant turn have no tool_result",
        )
    return out


def _user(content: Any, loc: str, pending: list[str], out: list[dict]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content blocks")
    parts: list[dict] = []
    extra: list[dict] = []  # images from tool results
    for j, block in enumerate(content):
        bloc = f"{loc}[{j}]"
        if not isinstance(block, dict):
            raise fail(bloc, "must be a content block object")
        kind = block.get("type")
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if call_id not in pending:
                raise fail(
                    f"{bloc}.tool_use_id",
                    f"{call_id!r} does not answer a tool use of the preceding assistant turn",
                )
            pending.remove(call_id)
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": call_id,
                    "content": _tool_result(block, bloc, extra),
                }
            )
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image(block, bloc))
        elif kind == "document":
            parts.append(_document(block, bloc))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise fail(
                f"{bloc}.type",
                f"content block type {kind!r} is not supported by this (OpenAI-format) model",
            )
    parts = extra + parts
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            out.append({"role": "user", "content": parts[0]["text"]})
        else:
            out.append({"role": "user", "content": parts})


def _tool_result(block: dict, loc: str, extra: list[dict]) -> str:
    content = block.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fail(f"{loc}.content", "must be a string or an array of content blocks")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind == "image":
            extra.append(_image(part, f"{loc}.content[{j}]"))
        elif kind == "document":
            extra.append(_document(part, f"{loc}.content[{j}]"))
        else:
            raise fail(
                f"{loc}.content[{j}]", f"block type {kind!r} is not supported in a tool result here"
            )
    return "\n".join(texts)


def _image(block: dict, loc: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")  # type: ignore[union-attr]
        if not isinstance(media, str) or not isinstance(data, str):
            raise fail(f"{loc}.source", "a base64 image needs media_type and data")
        url = f"data:{media};base64,{data}"
    elif kind == "url" and isinstance(source.get("url"), str):  # type: ignore[union-attr]
        url = source["url"]  # type: ignore[index]
    else:
        raise fail(
            f"{loc}.source", f"image source {kind!r} cannot be sent to this (OpenAI-format) model"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document(block: dict, loc: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    title = block.get("title")
    if (
        kind == "base64"
        and source.get("media_type") == "application/pdf"  # type: ignore[union-attr]
        and isinstance(source.get("data"), str)  # type: ignore[union-attr]
    ):
        return {
            "type": "file",
            "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{source['data']}",  # type: ignore[index]
            },
        }
    if kind == "text":
        return {"type": "text", "text": source.get("data") or ""}  # type: ignore[union-attr]
    if kind == "content" and isinstance(source.get("content"), list):  # type: ignore[union-attr]
        text = "\n".join(
            p.get("text") or ""
            for p in source["content"]  # type: ignore[index]
            if isinstance(p, dict) and p.get("type") == "text"
        )
        return {"type": "text", "text": text}
    raise fail(
        f"{loc}.source", f"document source {kind!r} cannot be sent to this (OpenAI-format) model"
    )


def _assistant(content: Any, loc: str, pending: list[str]) -> dict:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content blocks")
    texts: list[str] = []
    calls: list[dict] = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            call_id = block.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise fail(f"{loc}[{j}].id", "must be a non-empty string")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": dumps(block.get("input") or {}),
                    },
                }
            )
            pending.append(call_id)
        else:
            # thinking (signed for Anthropic only), server-tool blocks: not for
            # another provider.
            debug(log, "dropped an assistant block", type=kind)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    converted: list[dict] = []
    if isinstance(tools, list):
        for t in tools:
            if not isinstance(t, dict) or t.get("type") not in (None, "custom"):
                # Anthropic server tools (web search, code execution...) run at
                # Anthropic; an OpenAI-format model cannot call them.
                debug(
                    log,
                    "dropped an Anthropic server tool",
                    tool=t.get("type") if isinstance(t, dict) else t,
                )
                continue
            function: dict[str, Any] = {"name": t.get("name")}
            description = t.get("description")
            if isinstance(description, str) and description:
                function["description"] = description
            schema = t.get("input_schema")
            function["parameters"] = (
                schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
            )
            converted.append({"type": "function", "function": function})
    if not converted:
        return
    out["tools"] = converted
    tc = body.get("tool_choice")
    if not isinstance(tc, dict):
        return
    kind = tc.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
    elif kind == "none":
        out["tool_choice"] = "none"
    if tc.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


# --- streaming -----------------------------------------------------------------------


class _Call:
    __slots__ = ("block", "id", "name", "pending")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.block: int | None = None  # the Anthropic block index, once started
        self.pending: list[str] = []  # arguments that came before the name


_TEXT = b"text"
_THINKING = b"thinking"
_TOOL = b"tool_use"


class AnthropicToOpenAIStream(ParsedEvents):
    """OpenAI chat-completion chunks in, Anthropic Messages events out.

    Theory of operation
    -------------------
    OpenAI chunks are flat: each ``delta`` may carry ``content``,
    ``reasoning_content`` (or ``reasoning``), and ``tool_calls`` fragments indexed
    per call; the last choice chunk has ``finish_reason``, a usage chunk with empty
    ``choices`` follows (we always ask for it), then ``data: [DONE]``. Anthropic
    wants exactly one ``message_start``, then strictly sequential content blocks
    (start, deltas, stop), then ``message_delta`` (stop reason and usage) and
    ``message_stop``.

    State: at most one open block (``_open``, of kind ``_kind``), the next block
    index, and the tool calls seen (OpenAI index → :class:`_Call`). Transitions:

    ==============================  ================================================
    first chunk with choices        ``message_start`` (id, model; usage comes later)
    reasoning text                  open/continue a ``thinking`` block,
                                    ``thinking_delta``
    content (or refusal) text       open/continue a ``text`` block, ``text_delta``
    tool call, first seen by name   close the open block, open ``tool_use`` (id,
                                    name, ``input: {}``), then its arguments as
                                    ``input_json_delta``; arguments that arrive
                                    before the name wait for it
    more arguments for a call       ``input_json_delta`` on that call's block
    ``finish_reason``               remembered; the open block is closed
    usage chunk                     remembered
    ``[DONE]``                      close, ``message_delta`` (stop reason, usage),
                                    ``message_stop``; ``complete``
    SSE comment (keep-alive)        ``ping`` (a comment before ``message_start``)
    ``{"error": ...}`` chunk        an Anthropic ``error`` event; the stream ends
    ==============================  ================================================

    Azure's leading chunk with empty ``choices`` (prompt filter results) is skipped,
    so the message id and model come from a real chunk.
    """

    def __init__(self, owner: AnthropicToOpenAI) -> None:
        self._owner = owner
        self._decoder = SSEDecoder(comments=True)
        self._started = False
        self._id = ""
        self._model = ""
        self._open: int | None = None
        self._kind = b""
        self._next = 0
        self._calls: dict[Any, _Call] = {}
        self._finish: Any = None
        self._usage: dict | None = None
        self._done = False
        self.complete = False
        self.error: UpstreamError | None = None
        #: Provider events that could not be read, skipped.
        self.skipped = 0

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        events = self._decoder.feed(data)
        return self._handle(events) if events else b""

    def finish(self) -> bytes:
        if self._done:
            return b""
        out = self._handle(self._decoder.flush(), final=True)
        if not self._done and self._finish is not None:
            # Closed cleanly after its finish reason, without [DONE]: the answer is whole.
            end: list[bytes] = []
            self._end(end)
            out += b"".join(end)
        return out

    def fail(self, type: str, message: str) -> bytes:
        if self._done:
            return b""
        self._done = True
        return stream_error_event(ApiFormat.ANTHROPIC, type, message)

    # --- chunks --------------------------------------------------------------------

    def _handle(self, events: list[SSEEvent], final: bool = False) -> bytes:
        out: list[bytes] = []
        for ev in events:
            data = ev.data
            if not data:
                if ev.comment is not None:
                    out.append(_PING if self._started else b": ping\n\n")
                continue
            if data == "[DONE]":
                self._end(out)
                break
            try:
                chunk = loads(data)
            except ValueError:
                if final:  # the cut-off remains of a last event
                    break
                self.skipped += 1  # an event that cannot be read is skipped, not fatal
                continue
            self._one(None, chunk, out)
            if self._done:
                break
        return b"".join(out)

    def _one(self, name: str | None, chunk: Any, out: list[bytes]) -> None:
        """One chunk read; one that has not the shape of a chunk is skipped."""
        mark = len(out)
        try:
            self._chunk(chunk, out)
        except (KeyError, TypeError, AttributeError):
            del out[mark:]
            self.skipped += 1

    def _chunk(self, chunk: dict, out: list[bytes]) -> None:
        if chunk.get("error"):
            kind, message, code = parse_error(chunk)
            self.error = stream_failure(kind or code, message)
            self._done = True
            out.append(
                stream_error_event(
                    ApiFormat.ANTHROPIC, kind or code, message or "the provider reported an error"
                )
            )
            return
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # we never ask for n > 1
            if not self._started:
                self._start(out, chunk)
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and isinstance(reasoning, str):
                    index = self._block(_THINKING, out)
                    out.append(_THINKING_DELTA % (index, dumpb(reasoning)))
                text = delta.get("content")
                if text:
                    index = self._block(_TEXT, out)
                    out.append(_TEXT_DELTA % (index, dumpb(text)))
                refusal = delta.get("refusal")
                if refusal:
                    index = self._block(_TEXT, out)
                    out.append(_TEXT_DELTA % (index, dumpb(refusal)))
                calls = delta.get("tool_calls")
                if calls:
                    for position, call in enumerate(calls):
                        self._tool_call(call, position, out)
            finish = choice.get("finish_reason")
            if finish:
                self._finish = finish
                self._close(out)

    def _tool_call(self, fragment: dict, position: int, out: list[bytes]) -> None:
        key = fragment.get("index", position)
        call = self._calls.get(key)
        call_id = fragment.get("id")
        if call is not None and call_id and call.id and call_id != call.id:
            # A new call under a reused index (some servers number every call 0).
            key = (key, len(self._calls))
            call = None
        if call is None:
            call = self._calls[key] = _Call()
        if call_id and not call.id:
            call.id = call_id
        function = fragment.get("function") or {}
        name = function.get("name")
        if name and not call.name:
            call.name = name
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = dumps(arguments)  # some servers send the object itself
        if call.block is None:
            if arguments:
                call.pending.append(arguments)
            if call.name:
                self._open_tool(call, out)
        elif arguments:
            out.append(_JSON_DELTA % (call.block, dumpb(arguments)))

    def _open_tool(self, call: _Call, out: list[bytes]) -> None:
        self._close(out)
        index = self._next
        self._next += 1
        call.block = index
        if not call.id:
            call.id = f"toolu_{self._owner.request_id}_{index}"
        out.append(
            b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,"content_block":{"type":"tool_use","id":%s,"name":%s,"input":{}}}\n\n'
            % (index, dumpb(call.id), dumpb(call.name))
        )
        self._open = index
        self._kind = _TOOL
        if call.pending:
            out.append(_JSON_DELTA % (index, dumpb("".join(call.pending))))
            call.pending.clear()

    def _block(self, kind: bytes, out: list[bytes]) -> int:
        """The index of an open block of ``kind``, opening one if needed."""
        if self._open is not None and self._kind == kind:
            return self._open
        self._close(out)
        index = self._next
        self._next += 1
        body = _START_TEXT if kind is _TEXT else _START_THINKING
        out.append(
            b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,"content_block":%s}\n\n'
            % (index, body)
        )
        self._open = index
        self._kind = kind
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
                % self._open
            )
            self._open = None
            self._kind = b""

    def _start(self, out: list[bytes], chunk: dict | None = None) -> None:
        self._started = True
        owner = self._owner
        chunk = chunk or {}
        self._id = _msg_id(chunk.get("id"), owner.request_id)
        model = chunk.get("model")
        self._model = model if isinstance(model, str) and model else owner.model
        message = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(
            b'event: message_start\ndata: {"type":"message_start","message":'
            + dumpb(message)
            + b"}\n\n"
        )

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(out)
        for call in self._calls.values():
            if call.block is None:  # arguments never followed by a name
                self._open_tool(call, out)
        self._close(out)
        used_tools = bool(self._calls)
        delta = {"stop_reason": _stop_reason(self._finish, used_tools), "stop_sequence": None}
        if self._usage is not None:
            usage: dict[str, Any] = anthropic_usage(self._usage)
        else:
            usage = {"output_tokens": 0}
        out.append(
            b'event: message_delta\ndata: {"type":"message_delta","delta":%s,"usage":%s}\n\n'
            % (dumpb(delta), dumpb(usage))
        )
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        self.complete = True
        self._done = True


_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_START_TEXT = b'{"type":"text","text":""}'
_START_THINKING = b'{"type":"thinking","thinking":"","signature":""}'
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'
_THINKING_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"thinking_delta","thinking":%s}}\n\n'
_JSON_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
