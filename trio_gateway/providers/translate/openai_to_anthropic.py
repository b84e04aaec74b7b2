"""OpenAI chat-completions client, Anthropic Messages provider. Sans-IO.

Requests go OpenAI → Anthropic; responses, errors and streams come back Anthropic →
OpenAI. What maps to what, and what is dropped, is listed in ``docs/translation.md``;
the reasoning for each choice sits next to the code that makes it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any

from trio_gateway.errors import UpstreamError, UpstreamProtocolError
from trio_gateway.providers.formats import ApiFormat, stream_error_event
from trio_gateway.providers.sse import SSEDecoder, SSEEvent
from trio_gateway.providers.translate._common import (
    ParsedEvents,
    debug,
    dumpb,
    dumps,
    fail,
    loads,
    loads_object,
    log_dropped,
    new_id,
    openai_usage,
    parse_error,
    stream_failure,
    translate_error,
)

__all__ = ["OpenAIToAnthropic", "OpenAIToAnthropicStream"]

log = logging.getLogger(__name__)

#: Request fields this direction reads; everything else is dropped (debug-logged).
_HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "response_format",
        "reasoning_effort",
        "thinking",
    }
)

#: ``reasoning_effort`` as an extended-thinking budget. With no limit from the client,
#: ``max_tokens`` becomes the configured default plus the budget, which stays under
#: 32K (the smallest output limit of a thinking Claude model) for every effort.
_THINKING_BUDGET = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 24576,
    "max": 24576,
}
_MIN_THINKING_BUDGET = 1024

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: Anthropic's 529 is no HTTP status the OpenAI SDK knows; 503 is the retryable
#: "try again later" every OpenAI client handles.
_STATUS = {529: 503}

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def _tool_id(call_id: str) -> str:
    """A tool-call id as Anthropic accepts it (``[A-Za-z0-9_-]+``).

    Ids minted by other providers (``functions.get_weather:0``) reach Anthropic
    when a conversation moves between targets; both ends of a call map the same way.
    """
    return _BAD_ID_CHARS.sub("_", call_id) if _BAD_ID_CHARS.search(call_id) else call_id


class OpenAIToAnthropic:
    """One OpenAI-format request served by an Anthropic target."""

    def __init__(self, *, default_max_tokens: int, request_id: str | None, created: int) -> None:
        self.default_max_tokens = default_max_tokens
        self.created = created
        self.request_id = request_id or new_id()
        #: The client's model name, used when the provider's answer lacks one.
        self.model = ""
        #: The client asked for ``stream_options.include_usage``.
        self.include_usage = False

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
        system, turns, restored_thinking = _messages(messages)
        if not turns:
            if not system:
                raise fail("messages", "no message has any content")
            # A system-only conversation is valid for OpenAI, not for Anthropic
            # (which needs one message): the instructions become that message.
            turns = [{"role": "user", "content": system}]
            system = []

        out: dict[str, Any] = {"model": model}
        if system:
            one = system[0]
            out["system"] = one["text"] if len(system) == 1 and len(one) == 2 else system
        out["messages"] = turns

        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        explicit = type(max_tokens) is int and max_tokens > 0
        if not explicit:
            max_tokens = self.default_max_tokens
        out["max_tokens"] = max_tokens

        stop = body.get("stop")
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else stop
            if isinstance(stops, list):
                # Anthropic rejects whitespace-only stop sequences with a 400.
                kept = [s for s in stops if isinstance(s, str) and s.strip()]
                if len(kept) != len(stops):
                    debug(log, "dropped whitespace-only stop sequences", stop=stops)
                if kept:
                    out["stop_sequences"] = kept

        temperature = body.get("temperature")
        if _is_number(temperature):
            if temperature > 1:  # OpenAI allows 0..2, Anthropic 0..1
                debug(log, "clamped temperature to 1", temperature=temperature)
                temperature = 1
            out["temperature"] = temperature
        top_p = body.get("top_p")
        if _is_number(top_p):
            out["top_p"] = top_p
        top_k = body.get("top_k")  # not OpenAI's, but sent by clients of vLLM and co.
        if type(top_k) is int:
            out["top_k"] = top_k

        user = body.get("user") or body.get("safety_identifier")
        if isinstance(user, str) and user:
            out["metadata"] = {"user_id": user}

        if body.get("stream") is True:
            out["stream"] = True
            options = body.get("stream_options")
            # Anthropic always reports usage; the client gets it only if it asked.
            self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

        tool_choice = _tools(body, out)

        response_format = body.get("response_format")
        if isinstance(response_format, dict):
            kind = response_format.get("type")
            spec = response_format.get("json_schema")
            if (
                kind == "json_schema"
                and isinstance(spec, dict)
                and isinstance(spec.get("schema"), dict)
            ):
                out["output_config"] = {"format": {"type": "json_schema", "schema": spec["schema"]}}
            elif kind == "json_object":
                # Anthropic has no schema-less JSON mode. OpenAI requires the prompt
                # itself to ask for JSON in this mode, so the instruction is there.
                debug(log, "dropped response_format json_object (no Anthropic equivalent)")

        thinking = _thinking(body, max_tokens if explicit else None, tool_choice, turns)
        if thinking is not None:
            out["thinking"] = thinking
            if thinking.get("type") != "disabled":
                _fit_to_thinking(out)
                budget = thinking.get("budget_tokens")
                if not explicit and type(budget) is int:
                    out["max_tokens"] = max_tokens + budget  # room to think and to answer
        if restored_thinking and (thinking is None or thinking.get("type") == "disabled"):
            _strip_thinking(turns)

        log_dropped(log, body, _HANDLED, "dropped request fields Anthropic does not take")
        return out

    # --- response ------------------------------------------------------------------

    def response(self, body: dict) -> dict:
        content = body.get("content")
        if not isinstance(content, list):
            raise UpstreamProtocolError("Anthropic response has no content array")
        texts: list[str] = []
        reasoning: list[str] = []
        thinking_blocks: list[dict] = []
        tool_calls: list[dict] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(block.get("text") or "")
            elif kind == "tool_use":
                tool_calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "thinking":
                reasoning.append(block.get("thinking") or "")
                thinking_blocks.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("thinking") or "",
                        "signature": block.get("signature") or "",
                    }
                )
            elif kind == "redacted_thinking":
                thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data")})
            # Server-tool blocks (web search and co.) have no OpenAI form.
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "refusal": None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        if reasoning:
            message["reasoning_content"] = "\n".join(reasoning)
        if thinking_blocks:
            message["thinking_blocks"] = thinking_blocks
        usage = body.get("usage")
        msg_id = body.get("id")
        return {
            "id": "chatcmpl-" + (msg_id if isinstance(msg_id, str) else self.request_id),
            "object": "chat.completion",
            "created": self.created,
            "model": body.get("model") or self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish(body.get("stop_reason")),
                }
            ],
            "usage": openai_usage(usage if isinstance(usage, dict) else {}),
        }

    def error(self, status: int, body: bytes) -> tuple[int, bytes]:
        return translate_error(ApiFormat.OPENAI, status, body, status_map=_STATUS)

    def stream(self) -> OpenAIToAnthropicStream:
        return OpenAIToAnthropicStream(self)


def _finish(stop_reason: Any) -> str:
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


# --- messages ------------------------------------------------------------------------


def _messages(messages: list) -> tuple[list[dict], list[dict], bool]:
    """OpenAI messages as (Anthropic system blocks, turns, thinking restored?).

    - ``system``/``developer`` messages, wherever they are, join the top-level
      ``system`` in order (Anthropic has no system turns).
    - ``tool`` messages become ``tool_result`` blocks in a user turn; consecutive
      results (parallel tool calls) share that turn, and a user message right after
      them joins it after the results, as Anthropic requires.
    - Consecutive same-role turns are merged, so roles alternate.
    - Empty text is skipped (Anthropic rejects empty text blocks) and a turn left
      with no content is dropped.
    - A ``tool`` message must answer a tool call of the assistant message before it,
      and every such call must be answered before the conversation moves on; the
      OpenAI API refuses anything else, so a :class:`TranslationError` says so
      here rather than a provider 400 later.
    """
    system: list[dict] = []
    turns: list[dict] = []
    pending: list[str] = []  # tool calls of the last assistant turn not yet answered
    restored_thinking = False
    for i, m in enumerate(messages):
        loc = f"messages[{i}]"
        if not isinstance(m, dict):
            raise fail(loc, "must be an object")
        role = m.get("role")
        if role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in pending:
                raise fail(
                    f"{loc}.tool_call_id",
                    f"{call_id!r} does not answer a tool call of the preceding assistant message",
                )
            pending.remove(call_id)
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(call_id)}
            content = _tool_result_content(m.get("content"), f"{loc}.content")
            if content:
                result["content"] = content
            _append(turns, "user", [result])
            continue
        if pending:
            raise fail(
                loc, f"tool calls {pending} of the preceding assistant message have no tool message"
            )
        if role == "system" or role == "developer":
            system.extend(_text_blocks(m.get("content"), f"{loc}.content"))
        elif role == "user":
            _append(turns, "user", _user_blocks(m.get("content"), f"{loc}.content"))
        elif role == "assistant":
            blocks, thinking = _assistant_blocks(m, loc, pending)
            restored_thinking |= thinking
            _append(turns, "assistant", blocks)
        elif role == "function":
            debug(log, "dropped a legacy function message", index=i)
        else:
            raise fail(f"{loc}.role", f"unknown role {role!r}")
    if pending:
        raise fail(
            f"messages[{len(messages) - 1}]",
            f"tool calls {pending} of the last assistant message have no tool message",
        )
    if turns and turns[-1]["role"] == "assistant":
        # A final assistant turn is a prefill, which may not end in whitespace.
        last = turns[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                turns[-1]["content"].pop()
                if not turns[-1]["content"]:
                    turns.pop()
    return system, turns, restored_thinking


def _append(turns: list[dict], role: str, blocks: list[dict]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _text_block(part: dict, text: str) -> dict:
    block = {"type": "text", "text": text}
    cache = part.get("cache_control")
    if cache is not None:  # prompt-caching hints some OpenAI clients send for Claude
        block["cache_control"] = cache
    return block


def _parts(content: Any, loc: str) -> list[dict] | list[Any]:
    """A message's content as text blocks (a string) or its raw parts (an array)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content parts")
    return content


def _text_blocks(content: Any, loc: str) -> list[dict]:
    """Text-only content (system, developer, assistant text) as text blocks."""
    if not isinstance(content, list):
        return _parts(content, loc)
    blocks = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            raise fail(f"{loc}[{j}]", "only text parts are allowed here")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if isinstance(text, str) and text:
            blocks.append(_text_block(part, text))
    return blocks


def _user_blocks(content: Any, loc: str) -> list[dict]:
    if not isinstance(content, list):
        return _parts(content, loc)
    blocks = []
    for j, part in enumerate(content):
        block = _user_part(part, f"{loc}[{j}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _user_part(part: Any, loc: str) -> dict | None:
    if not isinstance(part, dict):
        raise fail(loc, "must be a content part object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise fail(f"{loc}.text", "must be a string")
        return _text_block(part, text) if text else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise fail(f"{loc}.image_url.url", "must be a string")
        block = _image(url, f"{loc}.image_url.url")
        cache = part.get("cache_control")
        if cache is not None:
            block["cache_control"] = cache
        return block
    if kind == "file":
        return _document(part.get("file"), f"{loc}.file")
    if kind == "input_audio":
        raise fail(loc, "audio input is not supported by this (Anthropic) model")
    raise fail(
        f"{loc}.type", f"content part type {kind!r} is not supported by this (Anthropic) model"
    )


def _data_url(url: str, loc: str) -> tuple[str, str]:
    """``data:<media>;base64,<data>`` as (media type, data)."""
    header, comma, data = url.partition(",")
    params = header[5:].split(";")
    if not comma or "base64" not in params[1:]:
        raise fail(loc, "a data URL must be base64-encoded (data:<type>;base64,<data>)")
    return params[0].strip().lower(), data


def _image(url: str, loc: str) -> dict:
    if url.startswith("data:"):
        media, data = _data_url(url, loc)
        if media == "image/jpg":
            media = "image/jpeg"
        if media not in _IMAGE_TYPES:
            raise fail(loc, f"image type {media!r} is not supported (use JPEG, PNG, GIF or WebP)")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise fail(loc, "an image must be an http(s) URL or a base64 data URL")


def _document(file: Any, loc: str) -> dict:
    """An OpenAI ``file`` part (inline PDF or text) as an Anthropic document block."""
    if not isinstance(file, dict):
        raise fail(loc, "must be an object")
    data = file.get("file_data")
    if not isinstance(data, str):
        raise fail(loc, "only inline file_data can be sent to this (Anthropic) model, not file_id")
    if data.startswith("data:"):
        media, data = _data_url(data, f"{loc}.file_data")
    else:
        media = "application/pdf"
    block: dict[str, Any]
    if media == "application/pdf":
        block = {
            "type": "document",
            "source": {"type": "base64", "media_type": media, "data": data},
        }
    elif media == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise fail(f"{loc}.file_data", "is not base64-encoded UTF-8 text") from exc
        block = {"type": "document", "source": {"type": "text", "media_type": media, "data": text}}
    else:
        raise fail(
            f"{loc}.file_data", f"file type {media!r} is not supported (use PDF or plain text)"
        )
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _tool_result_content(content: Any, loc: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content parts")
    blocks = []
    for j, part in enumerate(content):
        block = _user_part(part, f"{loc}[{j}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _assistant_blocks(m: dict, loc: str, pending: list[str]) -> tuple[list[dict], bool]:
    """An assistant message's blocks: thinking (if echoed back), text, tool uses."""
    blocks: list[dict] = []
    restored = False
    # Signed thinking, echoed back the way ``response`` hands it out (the
    # ``thinking_blocks`` convention of LiteLLM and others). ``reasoning_content``
    # alone carries no signature, which Anthropic requires, so it is not sent.
    for tb in m.get("thinking_blocks") or ():
        if isinstance(tb, dict):
            if tb.get("type") == "thinking" and tb.get("signature"):
                blocks.append(
                    {
                        "type": "thinking",
                        "thinking": tb.get("thinking") or "",
                        "signature": tb["signature"],
                    }
                )
                restored = True
            elif tb.get("type") == "redacted_thinking" and tb.get("data"):
                blocks.append({"type": "redacted_thinking", "data": tb["data"]})
                restored = True
    blocks.extend(_text_blocks(m.get("content"), f"{loc}.content"))
    tool_calls = m.get("tool_calls")
    if tool_calls:
        if not isinstance(tool_calls, list):
            raise fail(f"{loc}.tool_calls", "must be an array")
        for j, call in enumerate(tool_calls):
            cloc = f"{loc}.tool_calls[{j}]"
            if not isinstance(call, dict) or call.get("type", "function") != "function":
                raise fail(cloc, "only function tool calls can be sent to this (Anthropic) model")
            call_id = call.get("id")
            function = call.get("function")
            if not isinstance(call_id, str) or not call_id:
                raise fail(f"{cloc}.id", "must be a non-empty string")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise fail(f"{cloc}.function.name", "must be a string")
            arguments = loads_object(function.get("arguments"))
            blocks.append(
                {
                    "type": "tool_use",
                    "id": _tool_id(call_id),
                    "name": function["name"],
                    "input": arguments,
                }
            )
            pending.append(call_id)
    return blocks, restored


def _strip_thinking(turns: list[dict]) -> None:
    for turn in turns:
        if turn["role"] == "assistant":
            turn["content"] = [
                b for b in turn["content"] if b.get("type") not in ("thinking", "redacted_thinking")
            ]
    turns[:] = [t for t in turns if t["content"]]


# --- tools, thinking -----------------------------------------------------------------


def _tools(body: dict, out: dict) -> dict | None:
    """Fill ``tools``/``tool_choice``; return the Anthropic tool choice (or None)."""
    tools = body.get("tools")
    converted: list[dict] = []
    if isinstance(tools, list):
        for t in tools:
            function = t.get("function") if isinstance(t, dict) else None
            if not isinstance(function, dict) or t.get("type", "function") != "function":
                debug(log, "dropped a non-function tool", tool=t)
                continue
            schema = function.get("parameters")
            if not isinstance(schema, dict):
                schema = {"type": "object", "properties": {}}
            elif "type" not in schema:  # Anthropic insists on an object schema
                schema = {"type": "object", **schema}
            tool: dict[str, Any] = {"name": function.get("name")}
            description = function.get("description")
            if isinstance(description, str) and description:
                tool["description"] = description
            tool["input_schema"] = schema
            cache = t.get("cache_control")
            if cache is not None:
                tool["cache_control"] = cache
            converted.append(tool)
    if not converted:
        return None  # Anthropic refuses tool_choice without tools

    choice: dict[str, Any] | None = None
    tc = body.get("tool_choice")
    if tc == "none":
        choice = {"type": "none"}
    elif tc == "required":
        choice = {"type": "any"}
    elif isinstance(tc, dict):
        kind = tc.get("type")
        if kind == "function" and isinstance(tc.get("function"), dict):
            choice = {"type": "tool", "name": tc["function"].get("name")}
        elif kind == "allowed_tools" and isinstance(tc.get("allowed_tools"), dict):
            allowed = tc["allowed_tools"]
            names = {
                a["function"].get("name")
                for a in allowed.get("tools") or ()
                if isinstance(a, dict) and isinstance(a.get("function"), dict)
            }
            converted = [t for t in converted if t["name"] in names] or converted
            if allowed.get("mode") == "required":
                choice = {"type": "any"}
    if body.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    out["tools"] = converted
    if choice is not None:
        out["tool_choice"] = choice
    return choice


def _thinking(
    body: dict, max_tokens: int | None, choice: dict | None, turns: list[dict]
) -> dict | None:
    """Extended thinking from ``reasoning_effort`` (or a native ``thinking`` object).

    With a client limit (``max_tokens``; OpenAI counts reasoning in it, as Anthropic
    counts thinking), the budget takes at most half of it, leaving the other half for
    the answer. Thinking is switched off, rather than sent into a certain 400, when
    that leaves less than Anthropic's minimum budget, when the client forces a tool
    (Anthropic allows only auto/none tool choice with thinking), or when the request
    continues a tool-use turn whose thinking was not echoed back (Anthropic requires
    the last assistant turn to start with its signed thinking block then).
    """
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        thinking = None
        budget = _THINKING_BUDGET.get(body.get("reasoning_effort"))  # type: ignore[arg-type]
        if budget is not None:
            if max_tokens is not None:
                budget = min(budget, max_tokens // 2)
            if budget >= _MIN_THINKING_BUDGET:
                thinking = {"type": "enabled", "budget_tokens": budget}
            else:
                debug(log, "no room for thinking under max_tokens", max_tokens=max_tokens)
    if thinking is None or thinking.get("type") == "disabled":
        return thinking
    if choice is not None and choice["type"] in ("any", "tool"):
        debug(log, "thinking dropped: a forced tool choice excludes it")
        return None
    if len(turns) >= 2 and turns[-1]["role"] == "user" and turns[-2]["role"] == "assistant":
        first = turns[-2]["content"][0].get("type")
        ongoing = any(b.get("type") == "tool_result" for b in turns[-1]["content"])
        if ongoing and first not in ("thinking", "redacted_thinking"):
            debug(log, "thinking dropped: tool-use turn without its thinking block")
            return None
    return thinking


def _fit_to_thinking(out: dict) -> None:
    """Drop sampling settings Anthropic refuses while thinking is on."""
    if out.get("temperature", 1) != 1:
        debug(log, "dropped temperature (thinking is on)", temperature=out.pop("temperature"))
    if out.get("top_p", 1) < 0.95:
        debug(log, "dropped top_p (thinking is on)", top_p=out.pop("top_p"))
    if "top_k" in out:
        debug(log, "dropped top_k (thinking is on)", top_k=out.pop("top_k"))


# --- streaming -----------------------------------------------------------------------

_TEXT = 0
_THINKING = 1
_OTHER = 2


class _Tool:
    __slots__ = ("args_sent", "index", "input")

    def __init__(self, index: int, input: Any) -> None:
        self.index = index  # OpenAI's tool-call index: 0, 1, ... within the turn
        self.input = input  # from content_block_start, used if no delta follows
        self.args_sent = False


class OpenAIToAnthropicStream(ParsedEvents):
    """Anthropic Messages events in, OpenAI chat-completion chunks out.

    Theory of operation
    -------------------
    Anthropic frames a turn as ``message_start``, then content blocks (each
    ``content_block_start``, ``content_block_delta``\\*, ``content_block_stop``, with
    a block ``index``), then ``message_delta`` (stop reason, output usage) and
    ``message_stop``; ``ping`` may come anywhere, ``error`` ends the stream.
    OpenAI sends one kind of chunk whose ``delta`` carries ``role``, ``content``,
    ``reasoning_content`` or ``tool_calls`` entries indexed per *tool call*.

    State: ``blocks`` maps each Anthropic block index to its kind; a tool-use block
    also gets the next OpenAI tool-call index. Transitions:

    ================================  ==============================================
    ``message_start``                 one ``{"role": "assistant", "content": ""}``
    text block / ``text_delta``       ``content`` deltas
    thinking / ``thinking_delta``     ``reasoning_content`` deltas
    tool_use block start              ``tool_calls[{index, id, type, function:
                                      {name, arguments: ""}}]``
    ``input_json_delta``              ``tool_calls[{index, function: {arguments}}]``
    tool_use ``content_block_stop``   ``arguments`` = the start input (``"{}"``) when
                                      no delta carried any, so clients can parse it
    ``message_delta``                 the ``finish_reason`` chunk
    ``message_stop``                  usage chunk (if the client asked), ``[DONE]``
    ``ping``                          an SSE comment (a keep-alive for proxies)
    ``error``                         an OpenAI error event; the stream ends
    ================================  ==============================================

    Chunks are assembled from bytes prepared once per stream: per event, the only
    JSON work is one ``loads`` of the input and one ``dumps`` of the payload string.
    """

    def __init__(self, owner: OpenAIToAnthropic) -> None:
        self._owner = owner
        self._decoder = SSEDecoder()
        self._blocks: dict[int, int | _Tool] = {}
        self._tools = 0
        self._usage: dict[str, Any] = {}
        self._finished = False  # finish_reason chunk sent
        self._head = b""  # 'data: {"id":…,"choices":[{"index":0,"delta":'
        self._id = ""
        self._model = ""
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
        if not self._done and self._finished:
            # Closed cleanly after its stop reason, without message_stop: the answer is whole.
            end: list[bytes] = []
            self._stop(end)
            out += b"".join(end)
        return out

    def fail(self, type: str, message: str) -> bytes:
        if self._done:
            return b""
        self._done = True
        return stream_error_event(ApiFormat.OPENAI, type, message)

    # --- events ------------------------------------------------------------------------

    def _handle(self, events: list[SSEEvent], final: bool = False) -> bytes:
        out: list[bytes] = []
        for ev in events:
            try:
                d = loads(ev.data)
            except ValueError:
                d = None
            if not isinstance(d, dict):
                if final:  # the cut-off remains of a last event: not a protocol error
                    break
                self.skipped += 1  # an event that cannot be read is skipped, not fatal
                continue
            self._one(ev.event, d, out)
            if self._done:
                break
        return b"".join(out)

    def _one(self, name: str | None, d: dict, out: list[bytes]) -> None:
        """One event read (typed by its ``type``, else its ``event`` name); one that has
        not the shape its type says is skipped."""
        mark = len(out)
        try:
            self._event(d.get("type") or name, d, out)
        except (KeyError, TypeError, AttributeError):
            del out[mark:]
            self.skipped += 1

    def _event(self, kind: str | None, d: dict, out: list[bytes]) -> None:
        if kind == "content_block_delta":
            delta = d["delta"]
            dt = delta["type"]
            if dt == "text_delta":
                text = delta["text"]
                if text:
                    out.append(self._delta(b'{"content":' + dumpb(text) + b"}"))
            elif dt == "input_json_delta":
                part = delta.get("partial_json")
                block = self._blocks.get(d["index"])
                if part and isinstance(block, _Tool):
                    block.args_sent = True
                    out.append(self._tool_args(block.index, part))
            elif dt == "thinking_delta":
                text = delta["thinking"]
                if text:
                    out.append(self._delta(b'{"reasoning_content":' + dumpb(text) + b"}"))
            # signature_delta, citations_delta: nothing an OpenAI client can hold
        elif kind == "content_block_start":
            self._start(out)
            block = d["content_block"]
            bt = block["type"]
            if bt == "text":
                self._blocks[d["index"]] = _TEXT
                if block.get("text"):
                    out.append(self._delta(b'{"content":' + dumpb(block["text"]) + b"}"))
            elif bt == "tool_use":
                tool = _Tool(self._tools, block.get("input"))
                self._tools += 1
                self._blocks[d["index"]] = tool
                out.append(
                    self._delta(
                        b'{"tool_calls":[{"index":%d,"id":%s,"type":"function","function":{"name":%s,"arguments":""}}]}'
                        % (tool.index, dumpb(block["id"]), dumpb(block["name"]))
                    )
                )
            elif bt == "thinking":
                self._blocks[d["index"]] = _THINKING
                if block.get("thinking"):
                    out.append(
                        self._delta(b'{"reasoning_content":' + dumpb(block["thinking"]) + b"}")
                    )
            else:
                self._blocks[d["index"]] = _OTHER
        elif kind == "content_block_stop":
            block = self._blocks.get(d["index"])
            if isinstance(block, _Tool) and not block.args_sent:
                block.args_sent = True
                out.append(self._tool_args(block.index, dumps(block.input or {})))
        elif kind == "message_start":
            message = d["message"]
            if self._head:
                return  # a second message_start: the client has its one already
            usage = message.get("usage")
            if isinstance(usage, dict):
                self._usage.update(usage)
            self._start(out, message.get("id"), message.get("model"))
        elif kind == "message_delta":
            self._start(out)
            usage = d.get("usage")
            if isinstance(usage, dict):
                # Cumulative counts: a value present here replaces message_start's.
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            reason = (d.get("delta") or {}).get("stop_reason")
            if reason is not None and not self._finished:
                self._finished = True
                out.append(self._finish(_finish(reason)))
        elif kind == "message_stop":
            self._stop(out)
        elif kind == "ping":
            out.append(b": ping\n\n")
        elif kind == "error":
            err_kind, message, _ = parse_error(d)
            self.error = stream_failure(err_kind, message)
            self._done = True
            out.append(
                stream_error_event(
                    ApiFormat.OPENAI, err_kind, message or "the provider reported an error"
                )
            )
        # Unknown event types are ignored, as Anthropic's versioning policy asks.

    def _stop(self, out: list[bytes]) -> None:
        """The client's end: the finish chunk if not sent yet, usage if asked, ``[DONE]``."""
        self._start(out)
        if not self._finished:
            self._finished = True
            out.append(self._finish("tool_calls" if self._tools else "stop"))
        if self._owner.include_usage:
            out.append(
                b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[],"usage":%s}\n\n'
                % (
                    dumpb(self._id),
                    self._owner.created,
                    dumpb(self._model),
                    dumpb(openai_usage(self._usage)),
                )
            )
        out.append(b"data: [DONE]\n\n")
        self.complete = True
        self._done = True

    def _start(self, out: list[bytes], msg_id: Any = None, model: Any = None) -> None:
        if self._head:
            return
        owner = self._owner
        self._id = "chatcmpl-" + (
            msg_id if isinstance(msg_id, str) and msg_id else owner.request_id
        )
        self._model = model if isinstance(model, str) and model else owner.model
        self._head = (
            b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[{"index":0,"delta":'
            % (
                dumpb(self._id),
                owner.created,
                dumpb(self._model),
            )
        )
        out.append(self._delta(b'{"role":"assistant","content":""}'))

    def _delta(self, delta: bytes) -> bytes:
        return self._head + delta + b',"logprobs":null,"finish_reason":null}]}\n\n'

    def _tool_args(self, index: int, arguments: str) -> bytes:
        return self._delta(
            b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}' % (index, dumpb(arguments))
        )

    def _finish(self, reason: str) -> bytes:
        return self._head + b'{},"logprobs":null,"finish_reason":"' + reason.encode() + b'"}]}\n\n'
