"""OpenAI's Responses API (``POST /v1/responses``), as the fake provider speaks it: sans-IO.

Requests are checked the way ``api.openai.com`` checks them (OpenAI's error shape,
``param`` naming the field) and answered from :mod:`.content` like chat completions:
the same text, tool call and usage for the same conversation, so a test can compare
a Responses answer with a chat or Messages one. Whole answers are a ``response``
object with ``message`` and ``function_call`` output items; streams use the real
event grammar (``response.created``, ``response.in_progress``, then per item
``response.output_item.added`` … ``response.output_item.done`` with its parts and
deltas, and ``response.completed``, or ``response.incomplete`` when
``max_output_tokens`` cut the answer), every event with its ``sequence_number``.

The fake keeps no state: ``previous_response_id`` and ``conversation`` are accepted
and not looked up (the answer depends on the request's own ``input``), and built-in
tools are accepted and never called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trio_gateway.testing.fake import openai
from trio_gateway.testing.fake.content import (
    ANY,
    AUTO,
    NONE,
    Answer,
    Event,
    Prompt,
    Rejected,
    Stop,
    Tool,
    count_tokens,
    dumps,
    message_text,
)


def _invalid(param: str, message: str) -> Rejected:
    return Rejected(400, message, param=param, code="invalid_value")


def _missing(param: str) -> Rejected:
    return Rejected(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def parse(body: Any, *, served: Callable[[str], bool]) -> tuple[Prompt, bool]:
    """``(prompt, stream)`` of a Responses request, or :class:`Rejected`."""
    if not isinstance(body, dict):
        raise Rejected(400, openai.INVALID_JSON)
    if "model" not in body:
        raise _missing("model")
    model = body["model"]
    if not isinstance(model, str):
        raise Rejected(400, "Invalid type for 'model': expected a string.", param="model")
    if "input" not in body:
        raise _missing("input")
    items = body["input"]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise Rejected(
            400, "Invalid type for 'instructions': expected a string.", param="instructions"
        )
    tokens = count_tokens(instructions or "")
    said, tool_result, last_is_output = "", None, False
    if isinstance(items, str):
        said, tokens = items, tokens + count_tokens(items)
    elif isinstance(items, list):
        for i, item in enumerate(items):
            said, tool_result, last_is_output, counted = _item(item, i, said, tool_result)
            tokens += counted
    else:
        raise Rejected(
            400, "Invalid type for 'input': expected a string or an array.", param="input"
        )
    if not served(model):
        raise openai.model_not_found(model)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise Rejected(400, "Invalid type for 'stream': expected a boolean.", param="stream")
    max_tokens = body.get("max_output_tokens")
    prompt = Prompt(
        model=model,
        said=said,
        tool_result=tool_result if last_is_output else None,
        input_tokens=tokens,
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens if type(max_tokens) is int and max_tokens > 0 else None,
    )
    return prompt, bool(stream)


def _item(
    item: Any, i: int, said: str, tool_result: str | None
) -> tuple[str, str | None, bool, int]:
    """One input item: (said, tool result, is it a function_call_output, tokens)."""
    param = f"input[{i}]"
    if not isinstance(item, dict):
        raise Rejected(400, f"Invalid type for '{param}': expected an object.", param=param)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _invalid(
                f"{param}.role",
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', "
                "'system', and 'developer'.",
            )
        if "content" not in item:
            raise _missing(f"{param}.content")
        text = message_text(item["content"])
        return (text if role == "user" else said), tool_result, False, count_tokens(text)
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _missing(f"{param}.call_id")
        if "output" not in item:
            raise _missing(f"{param}.output")
        text = message_text(item["output"])
        return said, text, True, count_tokens(text)
    if kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            if not isinstance(item.get(name), str):
                raise _missing(f"{param}.{name}")
        return said, tool_result, False, 0
    if kind is None:
        raise _missing(f"{param}.type")
    return said, tool_result, False, 0  # reasoning, built-in tool items: no text to count


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Rejected(400, "Invalid type for 'tools': expected an array.", param="tools")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _missing(f"tools[{i}].type")
        if tool["type"] != "function":
            continue  # a built-in tool: accepted, never called
        if not isinstance(tool.get("name"), str):
            raise _missing(f"tools[{i}].name")
        parameters = tool.get("parameters")
        tools.append(Tool(tool["name"], parameters if isinstance(parameters, dict) else {}))
    return tuple(tools)


def _tool_choice(value: Any) -> str:
    match value:
        case "none":
            return NONE
        case "required":
            return ANY
        case {"type": "function", "name": str(name)}:
            return name
    return AUTO


# --- answers -----------------------------------------------------------------------------


def _usage(answer: Answer) -> dict[str, Any]:
    return {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


class Responder:
    """One answer, as a whole ``response`` or as the events of its stream.

    ``id`` is the fake's request id (``fake000001``); the response is ``resp_<id>``,
    its items ``msg_<id>`` and ``fc_<id>``, the call ``call_<id>``.
    """

    def __init__(self, body: dict, prompt: Prompt, answer: Answer, *, id: str, created: int):
        self.body = body
        self.prompt = prompt
        self.answer = answer
        self.id = id
        self.created = created
        self.incomplete = answer.stop is Stop.LENGTH

    def response(self, status: str, output: list[dict], *, usage: bool = True) -> dict[str, Any]:
        body = self.body
        parallel = body.get("parallel_tool_calls")
        store = body.get("store")
        return {
            "id": f"resp_{self.id}",
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": (
                {"reason": "max_output_tokens"} if status == "incomplete" else None
            ),
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.prompt.model,
            "output": output,
            "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": store if isinstance(store, bool) else True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": _usage(self.answer) if usage else None,
            "user": None,
            "metadata": {},
        }

    def items(self) -> list[dict[str, Any]]:
        """The finished output items."""
        items = []
        if self.answer.text:
            items.append(self._message(self.answer.text, self._final()))
        if self.answer.tool is not None:
            items.append(self._call(self.answer.tool.arguments, "completed"))
        return items

    def whole(self) -> dict[str, Any]:
        return self.response(self._final(), self.items())

    def _final(self) -> str:
        return "incomplete" if self.incomplete else "completed"

    def _message(self, text: str | None, status: str) -> dict[str, Any]:
        return {
            "id": f"msg_{self.id}",
            "type": "message",
            "status": status,
            "content": [] if text is None else [_text_part(text)],
            "role": "assistant",
        }

    def _call(self, arguments: str, status: str) -> dict[str, Any]:
        tool = self.answer.tool
        assert tool is not None
        return {
            "id": f"fc_{self.id}",
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": f"call_{self.id}",
            "name": tool.name,
        }

    def events(self) -> tuple[list[Event], Event]:
        """The events of the stream, and its terminator (``response.completed``)."""
        events: list[dict[str, Any]] = []

        def add(kind: str, **fields: Any) -> None:
            events.append({"type": kind, "sequence_number": len(events), **fields})

        started = self.response("in_progress", [], usage=False)
        add("response.created", response=started)
        add("response.in_progress", response=started)
        index = 0
        answer = self.answer
        if answer.text_pieces:
            msg = f"msg_{self.id}"
            at = {"item_id": msg, "output_index": index, "content_index": 0}
            add(
                "response.output_item.added",
                output_index=index,
                item=self._message(None, "in_progress"),
            )
            add("response.content_part.added", **at, part=_text_part(""))
            for piece in answer.text_pieces:
                add("response.output_text.delta", **at, delta=piece, logprobs=[])
            add("response.output_text.done", **at, text=answer.text, logprobs=[])
            add("response.content_part.done", **at, part=_text_part(answer.text))
            add(
                "response.output_item.done",
                output_index=index,
                item=self._message(answer.text, self._final()),
            )
            index += 1
        if answer.tool is not None:
            fc = f"fc_{self.id}"
            add(
                "response.output_item.added", output_index=index, item=self._call("", "in_progress")
            )
            for piece in answer.tool.pieces:
                add(
                    "response.function_call_arguments.delta",
                    item_id=fc,
                    output_index=index,
                    delta=piece,
                )
            add(
                "response.function_call_arguments.done",
                item_id=fc,
                output_index=index,
                name=answer.tool.name,
                arguments=answer.tool.arguments,
            )
            add(
                "response.output_item.done",
                output_index=index,
                item=self._call(answer.tool.arguments, "completed"),
            )
        final = self.whole()
        kind = "response.incomplete" if self.incomplete else "response.completed"
        terminator = {"type": kind, "sequence_number": len(events), "response": final}
        return [(e["type"], dumps(e)) for e in events], (kind, dumps(terminator))

    def error_event(self, status: int, body: Any, position: int) -> Event:
        """The stream failing at ``position`` (an error_event fault).

        A server error (5xx) is ``response.failed``: the response, failed, with
        ``error.code`` ``server_error``. Anything else (a 429 rate limit...) is an
        ``error`` event, shaped as OpenAI sends it (the fields in a nested ``error``;
        the Python SDK raises ``APIError`` on it). A given ``body`` is sent as the
        event's data.
        """
        if body is not None:
            kind = body.get("type") if isinstance(body, dict) else None
            return (kind if isinstance(kind, str) else "error", dumps(body))
        error = openai.error_body(status)["error"]
        if status >= 500:
            failed = self.response("failed", [], usage=False)
            failed["error"] = {"code": "server_error", "message": error["message"]}
            return (
                "response.failed",
                dumps({"type": "response.failed", "sequence_number": position, "response": failed}),
            )
        event = {"type": "error", "sequence_number": position, "error": error}
        return ("error", dumps(event))
