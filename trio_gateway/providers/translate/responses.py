"""OpenAI's Responses API, served by targets that do not speak it. Sans-IO.

A Responses client (``POST /v1/responses``) may be sent to a target that only has
chat completions (an ``openai-compatible`` server) or Anthropic's Messages API. The
translation goes through chat completions, the Responses API's older sibling in the
same dialect: a Responses request becomes a chat request, and a chat answer (whole or
streamed) becomes a Responses answer. An Anthropic target adds the existing chat ⇄
Messages translator behind that (:mod:`.responses_to_anthropic`), so every mapping to
and from Anthropic exists once.

This module holds the Responses side of both:

* :func:`check_stateless` and :func:`chat_request`: the request, as chat completions;
* :class:`ResponseShape`: the ``response`` object the client gets, echoing its
  request, built from a chat completion (:meth:`ResponseShape.from_chat`);
* :class:`ChatToResponsesStream`: chat-completion chunks in, Responses events out;
* :class:`ResponsesPassthroughStream`: the same-API case (a target that serves
  ``/v1/responses`` itself), whose only job is to end a broken stream properly.

The Responses API keeps state at OpenAI (stored responses, conversations, files,
hosted tools); a translated target has none of it, so a request that needs it is
refused before anything is sent (:class:`~._common.TranslationError`, 400, naming the
feature) rather than answered as if the state were there. ``docs/translation.md``
lists every mapping and what is dropped.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from trio_gateway.errors import Problem, UpstreamError, UpstreamProtocolError
from trio_gateway.providers.formats import responses_error_event, status_for_type
from trio_gateway.providers.sse import SSEDecoder, SSEEvent
from trio_gateway.providers.translate._common import (
    TranslationError,
    as_int,
    debug,
    dumpb,
    fail,
    loads,
    log_dropped,
    parse_error,
    stream_failure,
)

__all__ = [
    "ChatToResponsesStream",
    "ResponseShape",
    "ResponsesPassthroughStream",
    "chat_request",
    "check_stateless",
    "next_sequence_number",
]

log = logging.getLogger(__name__)

#: Provider kinds that are OpenAI's own API (``max_completion_tokens``, ``developer``).
OPENAI_PROPER = frozenset({"openai", "azure-openai"})

#: Request fields this translation reads; the rest is dropped (debug-logged).
_HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "background",
        # refused when set (check_stateless), so never silently dropped:
        "previous_response_id",
        "conversation",
        "prompt",
    }
)

#: Input item types of built-in tools: their calls ran at OpenAI, and a translated
#: target has neither the tool nor a way to receive its results.
_HOSTED_ITEMS = frozenset(
    {
        "file_search_call",
        "web_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "tool_search_call",
        "tool_search_output",
        "custom_tool_call",
        "custom_tool_call_output",
        "compaction",
        "compaction_trigger",
        "program",
        "program_output",
        "additional_tools",
    }
)


# --- the request -----------------------------------------------------------------------


def check_stateless(body: dict) -> None:
    """Refuse what needs state kept at OpenAI: the feature is named, nothing is sent.

    ``store`` is refused only when the client asks for it explicitly: the Responses
    API stores by default, but a client that did not ask does not rely on it, and an
    unstored answer is all a translated target can give (the answer says
    ``"store": false``).
    """
    if body.get("previous_response_id") is not None:
        raise _stateful(
            "previous_response_id",
            "continues a response stored at OpenAI; this target keeps no conversation "
            "state: send the whole conversation in 'input'",
        )
    if body.get("conversation") is not None:
        raise _stateful(
            "conversation",
            "names a conversation stored at OpenAI; this target keeps no conversation "
            "state: send the whole conversation in 'input'",
        )
    if body.get("store") is True:
        raise _stateful(
            "store",
            "this target cannot store responses (to retrieve or continue later): "
            "send 'store': false or leave it out",
        )
    if body.get("background") is True:
        raise _stateful(
            "background",
            "background mode needs responses run and stored at OpenAI; this target "
            "answers in the request only",
        )
    if body.get("prompt") is not None:
        raise _stateful(
            "prompt", "a stored prompt template lives at OpenAI; this target cannot read it"
        )


def _stateful(field: str, why: str) -> TranslationError:
    return fail(field, f"not supported by this target: {why}")


class _Where:
    """Where one chat message came from in the Responses request (for error locations)."""

    __slots__ = ("calls", "content", "item", "parts")

    def __init__(self, item: str, content: str, parts: list[str] | None = None) -> None:
        self.item = item  # input[3], or instructions
        self.content = content  # input[3].content, input[3].output, instructions
        self.parts = parts  # chat part j → its Responses location, when not content[j]
        self.calls: list[str] = []  # chat tool_calls[j] → the function_call item


class ChatRequest:
    """A Responses request as chat completions, and where each message came from."""

    __slots__ = ("body", "where")

    def __init__(self, body: dict, where: list[_Where]) -> None:
        self.body = body
        self.where = where

    def locate(self, error: TranslationError) -> TranslationError:
        """A chat-side :class:`TranslationError` with Responses locations instead.

        The chat ⇄ Messages translator names ``messages[2].content[1]``; the client
        sent ``input[4].content[1]``.
        """
        problems = [Problem(self._loc(p.loc), p.msg) for p in error.details] or [
            Problem("$", error.message)
        ]
        first = problems[0]
        return TranslationError(f"{first.loc}: {first.msg}", details=problems)

    def _loc(self, loc: str) -> str:
        if loc == "messages":
            return "input"
        m = _CHAT_LOC.match(loc)
        if m is None or int(m[1]) >= len(self.where):
            return loc
        where = self.where[int(m[1])]
        rest = m[2]
        if rest.startswith(".tool_calls["):
            j, _, tail = rest[len(".tool_calls[") :].partition("]")
            calls = where.calls
            if j.isdigit() and int(j) < len(calls):
                return calls[int(j)] + _TAILS.get(tail, tail)
            return where.item
        if rest.startswith(".content["):
            j, _, tail = rest[len(".content[") :].partition("]")
            tail = _part_tail(tail)
            if where.parts is not None and j.isdigit() and int(j) < len(where.parts):
                return where.parts[int(j)] + tail
            return f"{where.content}[{j}]{tail}"
        if rest.startswith(".content"):
            return where.content + rest[len(".content") :]
        if rest == ".tool_call_id":
            return where.item + ".call_id"
        return where.item + rest


_CHAT_LOC = re.compile(r"messages\[(\d+)\](.*)")
_TAILS = {".function.name": ".name", ".function.arguments": ".arguments", ".id": ".call_id"}


def _part_tail(tail: str) -> str:
    """A chat part's sub-location as the Responses part's."""
    for chat, responses in ((".image_url.url", ".image_url"), (".file.file_data", ".file_data")):
        if tail.startswith(chat):
            return responses + tail[len(chat) :]
    if tail.startswith(".file"):
        return tail[len(".file") :]
    return tail


def chat_request(body: dict, *, kind: str) -> ChatRequest:
    """A Responses request body as a chat-completions request body.

    ``kind`` is the provider kind; OpenAI's own (``openai``, ``azure-openai``) gets
    ``max_completion_tokens`` and ``developer`` messages, other servers ``max_tokens``
    and ``system``. Raises :class:`TranslationError` for what cannot be carried.
    """
    openai_proper = kind in OPENAI_PROPER
    model = body.get("model")
    messages: list[dict] = []
    where: list[_Where] = []

    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise fail("instructions", "must be a string")
    if instructions:
        messages.append({"role": "system", "content": instructions})
        where.append(_Where("instructions", "instructions"))

    items = body.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        where.append(_Where("input", "input"))
    elif isinstance(items, list):
        if not items:
            raise fail("input", "must not be empty")
        _Items(messages, where, developer=openai_proper).convert(items)
    elif items is None:
        raise fail("input", "is required: this target keeps no conversation state")
    else:
        raise fail("input", "must be a string or an array of input items")
    if not any(m["role"] != "system" and m["role"] != "developer" for m in messages):
        raise fail("input", "has no message for the model to answer")

    out: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_output_tokens")
    if type(max_tokens) is int and max_tokens > 0:
        out["max_completion_tokens" if openai_proper else "max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if type(value) is int or type(value) is float:
            out[key] = value
    user = body.get("user")
    identifier = body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["user"] = user
    if isinstance(identifier, str) and identifier:
        if openai_proper:
            out["safety_identifier"] = identifier
        elif "user" not in out:
            out["user"] = identifier
    if body.get("stream") is True:
        out["stream"] = True
        # The Responses answer always carries usage, so always ask for it.
        out["stream_options"] = {"include_usage": True}

    _tools(body, out)
    _text_format(body, out)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict):
        effort = reasoning.get("effort")
        if isinstance(effort, str):
            out["reasoning_effort"] = effort
        if reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None:
            debug(log, "dropped reasoning.summary (chat completions has no summaries)")

    log_dropped(log, body, _HANDLED, "dropped Responses fields chat completions does not take")
    return ChatRequest(out, where)


class _Items:
    """Input items → chat messages, one pass. See ``docs/translation.md``.

    - A message keeps its role (``developer`` becomes ``system`` outside OpenAI's
      own API, whose compatible servers rarely know it).
    - ``function_call`` items join the assistant message of their turn (a preceding
      assistant message, or a new one) as ``tool_calls``.
    - ``function_call_output`` items become ``tool`` messages. Images and files in
      an output (chat tool messages carry text only) follow as a user message after
      the turn's tool messages.
    - Every output must answer an earlier call, and every call must be answered
      before the conversation moves on or ends, as the Responses API itself
      requires.
    - ``reasoning`` items are dropped: their content (or encrypted content) is
      OpenAI's own and means nothing to another model.
    """

    def __init__(self, messages: list[dict], where: list[_Where], *, developer: bool) -> None:
        self.messages = messages
        self.where = where
        self.developer = developer
        self.turn: dict | None = None  # the assistant message of the current turn
        self.turn_where: _Where | None = None
        self.pending: dict[str, str] = {}  # call id → where the call is
        self.extra: list[dict] = []  # tool-output attachments waiting for a user message
        self.extra_where: list[str] = []

    def convert(self, items: list) -> None:
        last = "input"
        for k, item in enumerate(items):
            loc = last = f"input[{k}]"
            if not isinstance(item, dict):
                raise fail(loc, "must be an input item object")
            kind = item.get("type")
            if kind is None:
                if "role" in item:
                    kind = "message"
                elif "id" in item:
                    kind = "item_reference"
            if kind != "function_call_output":
                self._flush_extra()
            if kind == "message":
                self._message(item, loc)
            elif kind == "function_call":
                self._call(item, loc)
            elif kind == "function_call_output":
                self._output(item, loc)
            elif kind == "reasoning":
                debug(log, "dropped a reasoning item", index=k)
            elif kind == "item_reference":
                raise _stateful(
                    loc, "an item_reference names an item stored at OpenAI; send the item itself"
                )
            elif kind in _HOSTED_ITEMS:
                raise fail(
                    f"{loc}.type",
                    f"{kind!r} items belong to a built-in tool this target does not have",
                )
            else:
                raise fail(f"{loc}.type", f"input item type {kind!r} is not supported here")
        self._flush_extra()
        if self.pending:
            raise fail(last, f"function calls {list(self.pending)} have no function_call_output")

    def _add(self, message: dict, where: _Where) -> None:
        self.messages.append(message)
        self.where.append(where)

    def _message(self, item: dict, loc: str) -> None:
        role = item.get("role")
        content = item.get("content")
        if role == "assistant":
            text = _assistant_text(content, f"{loc}.content")
            if self.turn is not None and "tool_calls" in self.turn:
                # Text after the calls of the same turn: chat holds it in that message.
                if text:
                    self.turn["content"] = (self.turn["content"] or "") + text
                return
            if self.pending:
                raise fail(
                    loc,
                    f"function calls {list(self.pending)} have no function_call_output before it",
                )
            self.turn = {"role": "assistant", "content": text}
            self.turn_where = _Where(loc, f"{loc}.content")
            self._add(self.turn, self.turn_where)
            return
        if self.pending:
            raise fail(
                loc, f"function calls {list(self.pending)} have no function_call_output before it"
            )
        self.turn = self.turn_where = None
        if role in ("system", "developer"):
            if role == "developer" and not self.developer:
                role = "system"
            self._add({"role": role, "content": _text(content, f"{loc}.content")}, _where(loc))
        elif role == "user":
            self._add({"role": "user", "content": _user(content, f"{loc}.content")}, _where(loc))
        else:
            raise fail(
                f"{loc}.role", f"must be 'user', 'assistant', 'system' or 'developer', not {role!r}"
            )

    def _call(self, item: dict, loc: str) -> None:
        call_id = item.get("call_id")
        name = item.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise fail(f"{loc}.call_id", "must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise fail(f"{loc}.name", "must be a non-empty string")
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            raise fail(f"{loc}.arguments", "must be a string (JSON)")
        if self.turn is None:
            self.turn = {"role": "assistant", "content": None}
            self.turn_where = _Where(loc, f"{loc}.content")
            self._add(self.turn, self.turn_where)
        self.turn.setdefault("tool_calls", []).append(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        )
        assert self.turn_where is not None
        self.turn_where.calls.append(loc)
        self.pending[call_id] = loc

    def _output(self, item: dict, loc: str) -> None:
        call_id = item.get("call_id")
        if call_id not in self.pending:
            raise fail(
                f"{loc}.call_id",
                f"{call_id!r} does not answer a function_call earlier in input",
            )
        del self.pending[call_id]
        self.turn = self.turn_where = None
        output = item.get("output")
        oloc = f"{loc}.output"
        if isinstance(output, str):
            text = output
        elif isinstance(output, list):
            texts = []
            for j, part in enumerate(output):
                ploc = f"{oloc}[{j}]"
                if isinstance(part, dict) and part.get("type") in ("input_text", "output_text"):
                    texts.append(_string(part.get("text"), f"{ploc}.text"))
                else:
                    self.extra.append(_user_part(part, ploc))
                    self.extra_where.append(ploc)
            text = "\n".join(texts)
        elif output is None:
            text = ""
        else:
            raise fail(oloc, "must be a string or an array of content parts")
        self._add({"role": "tool", "tool_call_id": call_id, "content": text}, _Where(loc, oloc))

    def _flush_extra(self) -> None:
        if self.extra:
            where = _Where(self.extra_where[0], self.extra_where[0], parts=self.extra_where)
            self._add({"role": "user", "content": self.extra}, where)
            self.extra, self.extra_where = [], []


def _where(loc: str) -> _Where:
    return _Where(loc, f"{loc}.content")


def _string(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise fail(loc, "must be a string")
    return value


def _text(content: Any, loc: str) -> str:
    """System/developer content: a string, or text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
            raise fail(f"{loc}[{j}]", "only text parts are allowed in a system message")
        texts.append(_string(part.get("text"), f"{loc}[{j}].text"))
    return "\n".join(texts)


def _assistant_text(content: Any, loc: str) -> str:
    """An assistant message's content (echoed output): its text and refusals, joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content parts")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text"):
            texts.append(_string(part.get("text"), f"{loc}[{j}].text"))
        elif kind == "refusal":
            texts.append(_string(part.get("refusal"), f"{loc}[{j}].refusal"))
        else:
            raise fail(f"{loc}[{j}]", "an assistant message holds only output_text and refusal")
    return "".join(texts)


def _user(content: Any, loc: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content parts")
    parts = [_user_part(part, f"{loc}[{j}]") for j, part in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]  # every compatible server takes a plain string
    return parts


def _user_part(part: Any, loc: str) -> dict:
    if not isinstance(part, dict):
        raise fail(loc, "must be a content part object")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part.get("text"), f"{loc}.text")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            if part.get("file_id") is not None:
                raise _stateful(f"{loc}.file_id", "it names a file stored at OpenAI")
            raise fail(f"{loc}.image_url", "must be a URL or a data URL")
        image: dict[str, Any] = {"url": url}
        detail = part.get("detail")
        if detail in ("low", "high", "auto"):
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_id") is not None:
            raise _stateful(f"{loc}.file_id", "it names a file stored at OpenAI")
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            if part.get("file_url") is not None:
                raise fail(f"{loc}.file_url", "this target takes files inline only: send file_data")
            raise fail(f"{loc}.file_data", "must be a string (base64 or a data URL)")
        file: dict[str, Any] = {"file_data": data}
        filename = part.get("filename")
        if isinstance(filename, str) and filename:
            file["filename"] = filename
        return {"type": "file", "file": file}
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict):
            raise fail(f"{loc}.input_audio", "must be an object with data and format")
        return {"type": "input_audio", "input_audio": audio}
    raise fail(f"{loc}.type", f"content part type {kind!r} is not supported here")


def _tools(body: dict, out: dict) -> None:
    tools = body.get("tools")
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise fail("tools", "must be an array")
    converted: list[dict] = []
    for i, tool in enumerate(tools):
        loc = f"tools[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise fail(
                f"{loc}.type",
                f"{kind!r} is a built-in tool that runs at OpenAI; this target takes function "
                "tools only",
            )
        assert isinstance(tool, dict)
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"{loc}.name", "must be a non-empty string")
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        parameters = tool.get("parameters")
        function["parameters"] = (
            parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
        )
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        converted.append({"type": "function", "function": function})

    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            name = choice.get("name")
            if not isinstance(name, str):
                raise fail("tool_choice.name", "must be a string")
            choice = {"type": "function", "function": {"name": name}}
        elif kind == "allowed_tools":
            # Chat has its own allowed_tools, but compatible servers do not: the
            # tools not allowed are left out, which is what allowed_tools means.
            allowed = choice.get("tools")
            if not isinstance(allowed, list):
                raise fail("tool_choice.tools", "must be an array")
            names = set()
            for j, a in enumerate(allowed):
                if not isinstance(a, dict) or a.get("type") != "function":
                    raise fail(f"tool_choice.tools[{j}]", "only function tools can be allowed here")
                names.add(a.get("name"))
            converted = [t for t in converted if t["function"]["name"] in names]
            choice = "required" if choice.get("mode") == "required" else "auto"
        else:
            raise fail(
                "tool_choice.type",
                f"{kind!r} chooses a built-in tool; this target takes function tools only",
            )
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise fail("tool_choice", "must be 'auto', 'none', 'required' or an object")

    if not converted:
        return  # chat refuses tool_choice and parallel_tool_calls without tools
    out["tools"] = converted
    if choice is not None and choice != "auto":
        out["tool_choice"] = choice
    if isinstance(body.get("parallel_tool_calls"), bool):
        out["parallel_tool_calls"] = body["parallel_tool_calls"]


def _text_format(body: dict, out: dict) -> None:
    text = body.get("text")
    if not isinstance(text, dict):
        return
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise fail("text.format.schema", "must be an object (a JSON schema)")
        spec: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    if text.get("verbosity") is not None:
        debug(log, "dropped text.verbosity", verbosity=text.get("verbosity"))


# --- the response object ---------------------------------------------------------------


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponseShape:
    """The Responses ``response`` object of one request, and the ids in it.

    What does not change while the answer is made (the request's settings, which a
    ``response`` echoes: instructions, tools, tool choice, temperature...) is
    serialised once, in :meth:`of`; each lifecycle event then writes only the status,
    output and usage around it.
    """

    __slots__ = ("created", "model", "request_id", "settings", "static")

    def __init__(
        self, *, request_id: str, created: int, model: str = "", settings: dict | None = None
    ) -> None:
        self.request_id = request_id
        self.created = created
        self.model = model
        #: The request's settings, as the ``response`` echoes them.
        self.settings = settings or {}
        #: The same, serialised: ``"background":false,…`` (no braces).
        self.static = dumpb(self.settings)[1:-1] if settings else b""

    @classmethod
    def of(cls, body: dict, *, request_id: str, created: int) -> ResponseShape:
        model = body.get("model")
        reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
        assert isinstance(reasoning, dict)
        text = body.get("text")
        parallel = body.get("parallel_tool_calls")
        metadata = body.get("metadata")
        static = {
            "background": False,
            "instructions": body.get("instructions"),
            "max_output_tokens": _int_or_none(body.get("max_output_tokens")),
            "metadata": metadata if isinstance(metadata, dict) else {},
            "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
            "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": False,
            "temperature": _number(body.get("temperature"), 1.0),
            "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
            "top_p": _number(body.get("top_p"), 1.0),
            "truncation": "disabled",
            "user": body.get("user"),
        }
        return cls(
            request_id=request_id,
            created=created,
            model=model if isinstance(model, str) else "",
            settings=static,
        )

    def response_id(self, chat_id: Any) -> str:
        """``resp_`` and the provider's id, else the request's.

        The provider's own prefix goes (``chatcmpl-``, and Anthropic's ``msg_`` that
        the chat step kept), so output items can be ``msg_<id>_0``, ``fc_<id>_1``.
        """
        if isinstance(chat_id, str) and chat_id:
            return "resp_" + chat_id.removeprefix("chatcmpl-").removeprefix("msg_")
        return "resp_" + self.request_id

    def render(
        self,
        *,
        id: str,
        status: str,
        model: str,
        output: bytes = b"[]",
        usage: dict | None = None,
        incomplete: str | None = None,
        error: dict | None = None,
    ) -> bytes:
        """The ``response`` object as JSON bytes; ``output`` is already serialised."""
        return (
            b'{"id":%s,"object":"response","created_at":%d,"status":"%s","error":%s,"incomplete_details":%s,"model":%s,"output":%s,"usage":%s,%s}'
            % (
                dumpb(id),
                self.created,
                status.encode(),
                dumpb(error),
                dumpb({"reason": incomplete} if incomplete else None),
                dumpb(model or self.model),
                output,
                dumpb(usage),
                self.static,
            )
        )

    def from_chat(self, body: dict) -> dict:
        """A whole chat completion as the whole ``response`` object."""
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UpstreamProtocolError("OpenAI response has no choices")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise UpstreamProtocolError("OpenAI response choice has no message")
        resp_id = self.response_id(body.get("id"))
        base = resp_id.removeprefix("resp_")
        incomplete = _INCOMPLETE.get(choice.get("finish_reason"))  # type: ignore[arg-type]
        item_status = "incomplete" if incomplete else "completed"
        output: list[dict] = []
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            # Reasoning that an answer followed was finished, whatever stopped the answer.
            done = message.get("content") or message.get("refusal") or message.get("tool_calls")
            status = "completed" if done else item_status
            output.append(_reasoning_item(f"rs_{base}_0", reasoning, status))
        parts: list[dict] = []
        text = message.get("content")
        if isinstance(text, list):  # a few compatible servers answer with parts
            text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
        if isinstance(text, str) and text:
            parts.append(_output_text(text))
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        if parts:
            output.append(_message_item(f"msg_{base}_{len(output)}", parts, item_status))
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    continue
                arguments = function.get("arguments")
                if not isinstance(arguments, str):
                    arguments = "{}" if arguments is None else dumpb(arguments).decode()
                n = len(output)
                output.append(
                    _call_item(
                        f"fc_{base}_{n}",
                        call.get("id") or f"call_{base}_{n}",
                        function.get("name") or "",
                        arguments or "{}",
                        "completed",
                    )
                )
        usage = body.get("usage")
        model = body.get("model")
        return {
            "id": resp_id,
            "object": "response",
            "created_at": self.created,
            "status": "incomplete" if incomplete else "completed",
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": model if isinstance(model, str) and model else self.model,
            "output": output,
            "usage": responses_usage(usage) if isinstance(usage, dict) else None,
            **self.settings,
        }


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _number(value: Any, default: float) -> float:
    return value if type(value) is int or type(value) is float else default


def responses_usage(u: dict) -> dict:
    """Chat-completions usage as Responses usage."""
    prompt = as_int(u.get("prompt_tokens"))
    completion = as_int(u.get("completion_tokens"))
    ptd = u.get("prompt_tokens_details")
    ctd = u.get("completion_tokens_details")
    ptd = ptd if isinstance(ptd, dict) else {}
    ctd = ctd if isinstance(ctd, dict) else {}
    total = u.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": as_int(ptd.get("cached_tokens")),
            "cache_write_tokens": as_int(ptd.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": as_int(ctd.get("reasoning_tokens"))},
        "total_tokens": total if type(total) is int else prompt + completion,
    }


def _output_text(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _message_item(id: str, parts: list[dict], status: str) -> dict:
    return {"id": id, "type": "message", "status": status, "content": parts, "role": "assistant"}


def _reasoning_item(id: str, text: str, status: str) -> dict:
    return {
        "id": id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def _call_item(id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {
        "id": id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def failure_error(kind: str | None, message: str, original: str | None = None) -> dict:
    """A ``response.error`` object: its ``code`` is one of the Responses API's own.

    ``kind`` (an error type of any dialect, or the gateway's) picks the code;
    ``original`` (the provider's own, more specific name, when it has one) or else
    ``kind`` is kept as ``type``.
    """
    code = "rate_limit_exceeded" if status_for_type(kind, 500) == 429 else "server_error"
    error: dict[str, Any] = {"code": code, "message": message}
    named = original or kind
    if named and named != code:
        error["type"] = named
    return error


# --- streams: chat chunks → Responses events ---------------------------------------------

_MESSAGE = 0
_REASONING = 1


class _Open:
    """An open message or reasoning item and its current content part."""

    __slots__ = ("id", "id_json", "index", "kind", "part", "part_kind", "parts", "text")

    def __init__(self, kind: int, id: str, index: int) -> None:
        self.kind = kind
        self.id = id
        self.id_json = dumpb(id)
        self.index = index  # output_index
        self.parts: list[dict] = []  # finished parts
        self.part = -1  # content_index of the open part, -1: none
        self.part_kind = ""  # output_text, refusal, reasoning_text
        self.text: list[str] = []  # the open part's text so far


class _Call:
    __slots__ = ("arguments", "call_id", "done", "id", "id_json", "index", "name", "pending")

    def __init__(self) -> None:
        self.done = False
        self.call_id = ""
        self.name = ""
        self.id = ""
        self.id_json = b""
        self.index = -1  # output_index once its item was added
        self.arguments: list[str] = []
        self.pending: list[str] = []  # arguments that came before the name


class ChatToResponsesStream:
    """Chat-completion chunks in, Responses API events out.

    Theory of operation
    -------------------
    Chat chunks are flat deltas (``content``, ``refusal``, ``reasoning_content``,
    ``tool_calls`` fragments by index), then a ``finish_reason``, a usage chunk (we
    always ask for one) and ``data: [DONE]``. A Responses stream is typed events,
    each with a ``sequence_number`` from 0: ``response.created`` and
    ``response.in_progress`` (the ``response`` so far), then output items, each
    ``response.output_item.added`` … ``response.output_item.done`` with its parts and
    deltas in between, then ``response.completed`` (or ``response.incomplete``) with
    the whole response and usage.

    State: at most one open message or reasoning item (``_open``), the tool calls
    seen (chat index → :class:`_Call`), the finished output items (for the final
    ``response``), the finish reason and usage. Transitions:

    ==============================  ================================================
    first chunk                     ``response.created``, ``response.in_progress``
    ``reasoning_content`` text      open a ``reasoning`` item (closing a message) and
                                    its ``reasoning_text`` part; ``reasoning_text
                                    .delta``
    ``content`` text                open a ``message`` item (closing reasoning) and
                                    an ``output_text`` part; ``output_text.delta``
    ``refusal`` text                the same with a ``refusal`` part; ``refusal
                                    .delta``
    a tool call, once named         close the open item; ``output_item.added``
                                    (``function_call``); its arguments so far
    more arguments for a call       ``function_call_arguments.delta`` on its item
    ``finish_reason``               close the open item, then every call
                                    (``arguments.done``, ``output_item.done``)
    usage chunk                     remembered
    ``[DONE]``                      ``response.completed``, or ``response.incomplete``
                                    for ``length``/``content_filter``; ``complete``
    SSE comment (keep-alive)        passed on as a comment
    ``{"error": ...}`` chunk        ``response.failed`` (an ``error`` event if
                                    nothing was sent yet); the stream ends
    an event that cannot be read    skipped and counted (``skipped``)
    ``finish()`` after a finish     ``response.completed`` as at ``[DONE]``: the
    reason, without ``[DONE]``      provider closed cleanly, the answer is whole
    ==============================  ================================================

    Tool calls stay open until the turn ends, so an argument fragment that arrives
    after another call began still lands in its own call; items that hold text are
    closed as soon as something else starts, as OpenAI's own streams do.
    """

    def __init__(self, shape: ResponseShape) -> None:
        self._shape = shape
        self._decoder = SSEDecoder(comments=True)
        self._seq = 0
        self._started = False
        self._id = ""
        self._base = ""
        self._model = ""
        self._output: list[dict | None] = []  # by output_index; None while open
        self._open: _Open | None = None
        self._calls: dict[Any, _Call] = {}
        self._open_calls: list[_Call] = []
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
        return self._failed(type, message)

    # --- chunks ----------------------------------------------------------------------

    def _handle(self, events: list[SSEEvent], final: bool = False) -> bytes:
        out: list[bytes] = []
        for ev in events:
            data = ev.data
            if not data:
                if ev.comment is not None:
                    out.append(b": keep-alive\n\n")
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
            try:
                self._chunk(chunk, out)
            except (KeyError, TypeError, AttributeError):
                # What the chunk did before it broke stays: the events sent so far are
                # the state's, and the next events follow on from both.
                self.skipped += 1
            if self._done:
                break
        return b"".join(out)

    def _chunk(self, chunk: dict, out: list[bytes]) -> None:
        if chunk.get("error"):
            kind, message, code = parse_error(chunk)
            self.error = stream_failure(kind or code, message)
            self._done = True
            out.append(
                self._failed(kind or code, message or "the provider reported an error", code)
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
                    self._text(_REASONING, "reasoning_text", reasoning, out)
                text = delta.get("content")
                if text:
                    self._text(_MESSAGE, "output_text", text, out)
                refusal = delta.get("refusal")
                if refusal:
                    self._text(_MESSAGE, "refusal", refusal, out)
                calls = delta.get("tool_calls")
                if calls:
                    for position, call in enumerate(calls):
                        self._tool_call(call, position, out)
            finish = choice.get("finish_reason")
            if finish:
                self._finish = finish
                self._close_all(out)

    # --- events ----------------------------------------------------------------------

    def _event(self, name: bytes, body: bytes) -> bytes:
        """One event: ``body`` is the JSON members after ``type`` and ``sequence_number``."""
        seq = self._seq
        self._seq += 1
        return b'event: %s\ndata: {"type":"%s","sequence_number":%d,%s}\n\n' % (
            name,
            name,
            seq,
            body,
        )

    def _start(self, out: list[bytes], chunk: dict | None = None) -> None:
        self._started = True
        shape = self._shape
        chunk = chunk or {}
        self._id = shape.response_id(chunk.get("id"))
        self._base = self._id.removeprefix("resp_")
        model = chunk.get("model")
        self._model = model if isinstance(model, str) and model else shape.model
        response = shape.render(id=self._id, status="in_progress", model=self._model)
        out.append(self._event(b"response.created", b'"response":' + response))
        out.append(self._event(b"response.in_progress", b'"response":' + response))

    def _add_item(self, item: dict, out: list[bytes]) -> int:
        index = len(self._output)
        self._output.append(None)
        out.append(
            self._event(
                b"response.output_item.added", b'"output_index":%d,"item":%s' % (index, dumpb(item))
            )
        )
        return index

    def _done_item(self, index: int, item: dict, out: list[bytes]) -> None:
        self._output[index] = item
        out.append(
            self._event(
                b"response.output_item.done", b'"output_index":%d,"item":%s' % (index, dumpb(item))
            )
        )

    def _text(self, kind: int, part_kind: str, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != kind:
            self._close_open(out)
            n = len(self._output)
            if kind == _MESSAGE:
                id = f"msg_{self._base}_{n}"
                added = _message_item(id, [], "in_progress")
            else:
                id = f"rs_{self._base}_{n}"
                added = {"id": id, "type": "reasoning", "summary": [], "status": "in_progress"}
            item = self._open = _Open(kind, id, 0)
            item.index = self._add_item(added, out)
        if item.part_kind != part_kind:
            self._close_part(item, out)
            item.part = len(item.parts)
            item.part_kind = part_kind
            out.append(
                self._event(
                    b"response.content_part.added",
                    b'"item_id":%s,"output_index":%d,"content_index":%d,"part":%s'
                    % (item.id_json, item.index, item.part, _empty_part(part_kind)),
                )
            )
        item.text.append(text)
        if part_kind == "output_text":
            name, extra = b"response.output_text.delta", b',"logprobs":[]'
        elif part_kind == "refusal":
            name, extra = b"response.refusal.delta", b""
        else:
            name, extra = b"response.reasoning_text.delta", b""
        out.append(
            self._event(
                name,
                b'"item_id":%s,"output_index":%d,"content_index":%d,"delta":%s%s'
                % (item.id_json, item.index, item.part, dumpb(text), extra),
            )
        )

    def _close_part(self, item: _Open, out: list[bytes]) -> None:
        if item.part < 0 or not item.part_kind:
            return
        text = "".join(item.text)
        item.text = []
        kind = item.part_kind
        item.part_kind = ""
        head = b'"item_id":%s,"output_index":%d,"content_index":%d' % (
            item.id_json,
            item.index,
            item.part,
        )
        if kind == "output_text":
            part = _output_text(text)
            out.append(
                self._event(
                    b"response.output_text.done",
                    head + b',"text":%s,"logprobs":[]' % dumpb(text),
                )
            )
        elif kind == "refusal":
            part = {"type": "refusal", "refusal": text}
            out.append(self._event(b"response.refusal.done", head + b',"refusal":%s' % dumpb(text)))
        else:
            part = {"type": "reasoning_text", "text": text}
            out.append(
                self._event(b"response.reasoning_text.done", head + b',"text":%s' % dumpb(text))
            )
        item.parts.append(part)
        out.append(self._event(b"response.content_part.done", head + b',"part":%s' % dumpb(part)))

    def _item_status(self) -> str:
        return "incomplete" if _INCOMPLETE.get(self._finish) else "completed"

    def _close_open(self, out: list[bytes]) -> None:
        item = self._open
        if item is None:
            return
        self._open = None
        self._close_part(item, out)
        status = self._item_status()
        if item.kind == _MESSAGE:
            done = _message_item(item.id, item.parts, status)
        else:
            done = {
                "id": item.id,
                "type": "reasoning",
                "summary": [],
                "content": item.parts,
                "status": status,
            }
        self._done_item(item.index, done, out)

    def _tool_call(self, fragment: dict, position: int, out: list[bytes]) -> None:
        key = fragment.get("index", position)
        call = self._calls.get(key)
        call_id = fragment.get("id")
        if call is not None and call_id and call.call_id and call_id != call.call_id:
            # A new call under a reused index (some servers number every call 0).
            key = (key, len(self._calls))
            call = None
        if call is None:
            call = self._calls[key] = _Call()
        if call_id and not call.call_id:
            call.call_id = call_id
        function = fragment.get("function") or {}
        name = function.get("name")
        if name and not call.name:
            call.name = name
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            arguments = dumpb(arguments).decode()  # some servers send the object itself
        if call.index < 0:
            if arguments:
                call.pending.append(arguments)
            if call.name:
                self._open_call(call, out)
        elif arguments and not call.done:
            self._arguments(call, arguments, out)

    def _open_call(self, call: _Call, out: list[bytes]) -> None:
        self._close_open(out)
        n = len(self._output)
        call.id = f"fc_{self._base}_{n}"
        call.id_json = dumpb(call.id)
        if not call.call_id:
            call.call_id = f"call_{self._base}_{n}"
        call.index = self._add_item(
            _call_item(call.id, call.call_id, call.name, "", "in_progress"), out
        )
        self._open_calls.append(call)
        if call.pending:
            self._arguments(call, "".join(call.pending), out)
            call.pending = []

    def _arguments(self, call: _Call, arguments: str, out: list[bytes]) -> None:
        call.arguments.append(arguments)
        out.append(
            self._event(
                b"response.function_call_arguments.delta",
                b'"item_id":%s,"output_index":%d,"delta":%s'
                % (call.id_json, call.index, dumpb(arguments)),
            )
        )

    def _close_calls(self, out: list[bytes]) -> None:
        for call in self._open_calls:
            call.done = True
            if not call.arguments:  # a tool without parameters: clients parse "{}"
                self._arguments(call, "{}", out)
            arguments = "".join(call.arguments)
            out.append(
                self._event(
                    b"response.function_call_arguments.done",
                    b'"item_id":%s,"output_index":%d,"name":%s,"arguments":%s'
                    % (call.id_json, call.index, dumpb(call.name), dumpb(arguments)),
                )
            )
            self._done_item(
                call.index,
                _call_item(call.id, call.call_id, call.name, arguments, "completed"),
                out,
            )
        self._open_calls = []

    def _close_all(self, out: list[bytes]) -> None:
        for call in self._calls.values():
            if call.index < 0 and call.pending:  # arguments never followed by a name
                self._open_call(call, out)
        self._close_open(out)
        self._close_calls(out)

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start(out)
        self._close_all(out)
        incomplete = _INCOMPLETE.get(self._finish)
        response = self._shape.render(
            id=self._id,
            status="incomplete" if incomplete else "completed",
            model=self._model,
            output=dumpb([item for item in self._output if item is not None]),
            usage=responses_usage(self._usage) if self._usage is not None else None,
            incomplete=incomplete,
        )
        name = b"response.incomplete" if incomplete else b"response.completed"
        out.append(self._event(name, b'"response":' + response))
        self.complete = True
        self._done = True

    def _failed(self, kind: str | None, message: str, original: str | None = None) -> bytes:
        """``response.failed`` with what was made so far (``error`` before any event)."""
        if not self._started:
            return responses_error_event(kind, message, sequence_number=self._seq)
        response = self._shape.render(
            id=self._id,
            status="failed",
            model=self._model,
            output=dumpb(self._snapshot()),
            usage=responses_usage(self._usage) if self._usage is not None else None,
            error=failure_error(kind, message, original),
        )
        return self._event(b"response.failed", b'"response":' + response)

    def _snapshot(self) -> list[dict]:
        """The output so far: items still open are there as far as they got, incomplete."""
        output = list(self._output)
        item = self._open
        if item is not None:
            parts = list(item.parts)
            if item.part_kind:
                text = "".join(item.text)
                if item.part_kind == "output_text":
                    parts.append(_output_text(text))
                elif item.part_kind == "refusal":
                    parts.append({"type": "refusal", "refusal": text})
                else:
                    parts.append({"type": "reasoning_text", "text": text})
            if item.kind == _MESSAGE:
                output[item.index] = _message_item(item.id, parts, "incomplete")
            else:
                output[item.index] = _reasoning_item(item.id, "", "incomplete")
                output[item.index]["content"] = parts  # type: ignore[index]
        for call in self._open_calls:
            output[call.index] = _call_item(
                call.id, call.call_id, call.name, "".join(call.arguments), "incomplete"
            )
        return [item for item in output if item is not None]


def _empty_part(kind: str) -> bytes:
    if kind == "output_text":
        return b'{"type":"output_text","annotations":[],"logprobs":[],"text":""}'
    if kind == "refusal":
        return b'{"type":"refusal","refusal":""}'
    return b'{"type":"reasoning_text","text":""}'


# --- the same API on both sides --------------------------------------------------------

_SEQUENCE = re.compile(rb'"sequence_number":\s*(\d+)')


def next_sequence_number(data: bytes) -> int:
    """The sequence number after the last one in ``data`` (Responses events), else 0."""
    at = data.rfind(b'"sequence_number"')
    if at >= 0:
        m = _SEQUENCE.match(data, at)
        if m is not None:
            return int(m[1]) + 1
    return 0


class ResponsesPassthroughStream:
    """A Responses stream relayed as it came, ended properly when it breaks.

    The target serves ``/v1/responses`` itself, so its events go to the client
    untouched (the actor's :class:`~trio_gateway.providers.watch.StreamWatch` in
    :attr:`~trio_gateway.providers.formats.Api.RESPONSES` mode judges them). When the
    stream breaks after the client has some of it (a cut, a timeout), the client
    gets ``response.failed`` for the response it has been reading, with the next
    sequence number, which is how Responses clients learn that a response failed;
    before any ``response.created``, an ``error`` event.

    Costs a ``find`` per fed chunk and one JSON parse per stream (``response.created``).
    """

    error: None = None  # the actor's watch judges the provider's events
    complete: bool = False
    skipped: int = 0

    def __init__(self) -> None:
        self._created: dict | None = None
        self._next = 0  # the next sequence number
        self._done = False

    def feed(self, data: bytes) -> bytes:
        if self._created is None and b"response.created" in data:
            self._remember(data)
        at = data.rfind(b'"sequence_number"')
        if at >= 0:
            m = _SEQUENCE.match(data, at)
            if m is not None:
                self._next = int(m[1]) + 1
        return data

    def finish(self) -> bytes:
        return b""

    def fail(self, type: str, message: str) -> bytes:
        if self._done:
            return b""
        self._done = True
        if self._created is None:
            return responses_error_event(type, message, sequence_number=self._next)
        response = dict(self._created)
        response["status"] = "failed"
        response["error"] = failure_error(type, message)
        event = {
            "type": "response.failed",
            "sequence_number": self._next,
            "response": response,
        }
        return b"event: response.failed\ndata: " + dumpb(event) + b"\n\n"

    def _remember(self, data: bytes) -> None:
        decoder = SSEDecoder()
        for ev in decoder.feed(data) + decoder.flush():
            try:
                payload = loads(ev.data)
            except ValueError:
                continue
            if isinstance(payload, dict) and payload.get("type") == "response.created":
                response = payload.get("response")
                if isinstance(response, dict):
                    self._created = response
                return
