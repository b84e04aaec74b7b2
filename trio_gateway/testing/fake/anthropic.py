"""The Anthropic Messages wire format, as the fake provider speaks it: sans-IO.

Requests are checked the way ``api.anthropic.com`` checks them: the API key,
``anthropic-version``, a served ``model``, the required ``max_tokens`` and
``messages``, with ``{"type": "error", "error": {"type", "message"}}`` bodies.
Answers are messages with ``text`` and ``tool_use`` blocks, whole or streamed
with the real event grammar: ``message_start``, then per block
``content_block_start``/``content_block_delta``/``content_block_stop`` (a
``ping`` after the first start), ``message_delta`` with ``stop_reason`` and
usage, and ``message_stop`` as the terminator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

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

#: ``anthropic-version`` is a date: 2023-01-01, 2023-06-01, and the newer dates SDKs send.
_VERSION = re.compile(r"^20[2-9]\d-[01]\d-[0-3]\d$")
OLDEST_VERSION = "2023-01-01"
TERMINATOR: Event = ("message_stop", dumps({"type": "message_stop"}))
CREATED_AT = "2024-10-22T00:00:00Z"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MESSAGES = {
    400: "Invalid request.",
    401: "invalid x-api-key",
    402: "Your credit balance is too low to access the Anthropic API.",
    403: "Your API key does not have permission to use the specified resource.",
    404: "Not found.",
    413: "Request exceeds the maximum allowed number of bytes.",
    429: "Number of requests has exceeded your rate limit. Please try again later.",
    500: "Internal server error",
    504: "Request timed out",
    529: "Overloaded",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(
    status: int, message: str | None = None, *, type: str | None = None
) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {
            "type": type or error_type(status),
            "message": message or _MESSAGES.get(status, "Error"),
        },
    }


def rejected_body(exc: Rejected) -> dict[str, Any]:
    # Rejected.type carries OpenAI's names; Anthropic's follow from the status.
    return error_body(exc.status, exc.message)


def check_headers(headers: Mapping[str, str], api_key: str | None) -> None:
    """The API key (401 otherwise) and an ``anthropic-version`` (400 otherwise).

    The key comes as ``x-api-key`` or, as the SDK (2.x) sends it, ``Authorization:
    Bearer``. The version must be a date from 2023-01-01 on.
    """
    presented = headers.get("x-api-key", "")
    if not presented:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else ""
    if not presented:
        raise Rejected(401, "x-api-key header is required")
    if api_key is not None and presented != api_key:
        raise Rejected(401, "invalid x-api-key")
    version = headers.get("anthropic-version")
    if version is None:
        raise Rejected(400, "anthropic-version: header is required")
    if not _VERSION.match(version) or version < OLDEST_VERSION:
        raise Rejected(400, f"anthropic-version: invalid version {version!r}")


def _field_required(name: str) -> Rejected:
    return Rejected(400, f"{name}: Field required")


def parse_messages(
    body: Any, *, served: Callable[[str], bool], count_only: bool = False
) -> tuple[Prompt, bool]:
    """``(prompt, stream)`` of a Messages request, or :class:`Rejected`."""
    if not isinstance(body, dict):
        raise Rejected(400, "There was an error parsing the body of your request.")
    if "model" not in body:
        raise _field_required("model")
    model = body["model"]
    if not isinstance(model, str):
        raise Rejected(400, "model: Input should be a valid string")
    if not count_only:
        if "max_tokens" not in body:
            raise _field_required("max_tokens")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise Rejected(400, "max_tokens: Input should be a valid integer greater than 0")
    else:
        max_tokens = None
    if "messages" not in body:
        raise _field_required("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise Rejected(400, "messages: Input should be a valid list")
    if not messages:
        raise Rejected(400, "messages: at least one message is required")
    tokens = count_tokens(message_text(body.get("system")))
    said, tool_result = "", None
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Rejected(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _field_required(f"messages.{i}.content")
        content = message["content"]
        text = message_text(content)
        results = _tool_results(content)
        tokens += count_tokens(text) + sum(count_tokens(r) for r in results)
        if role == "user":
            said = text or said
            tool_result = results[-1] if results else None
    if not served(model):
        raise Rejected(404, f"model: {model}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise Rejected(400, "stream: Input should be a valid boolean")
    prompt = Prompt(
        model=model,
        said=said,
        tool_result=tool_result if messages[-1].get("role") == "user" else None,
        input_tokens=tokens,
        tools=_tools(body.get("tools")),
        tool_choice=_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens,
    )
    return prompt, stream


def _tool_results(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [
        message_text(block.get("content"))
        for block in content
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]


def _tools(value: Any) -> tuple[Tool, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Rejected(400, "tools: Input should be a valid list")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _field_required(f"tools.{i}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) and "type" not in tool:
            raise _field_required(f"tools.{i}.input_schema")
        tools.append(Tool(tool["name"], schema if isinstance(schema, dict) else {}))
    return tuple(tools)


def _tool_choice(value: Any) -> str:
    match value:
        case {"type": "none"}:
            return NONE
        case {"type": "any"}:
            return ANY
        case {"type": "tool", "name": str(name)}:
            return name
    return AUTO


_STOP = {Stop.END: "end_turn", Stop.LENGTH: "max_tokens", Stop.TOOL: "tool_use"}


def _usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": answer.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _tool_id(id: str) -> str:
    return "toolu_" + id.removeprefix("msg_")


def message(prompt: Prompt, answer: Answer, *, id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    if answer.tool is not None:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(id),
                "name": answer.tool.name,
                "input": json.loads(answer.tool.arguments),
            }
        )
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": content,
        "stop_reason": _STOP[answer.stop],
        "stop_sequence": None,
        "usage": _usage(answer, answer.output_tokens),
    }


def stream_events(prompt: Prompt, answer: Answer, *, id: str) -> list[Event]:
    """The events of a streamed message, without the ``message_stop`` terminator."""
    start = message(prompt, answer, id=id)
    start.update(content=[], stop_reason=None, usage=_usage(answer, 1))
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if answer.text_pieces:
        blocks.append(
            (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": piece} for piece in answer.text_pieces],
            )
        )
    if answer.tool is not None:
        blocks.append(
            (
                {"type": "tool_use", "id": _tool_id(id), "name": answer.tool.name, "input": {}},
                [{"type": "input_json_delta", "partial_json": p} for p in answer.tool.pieces],
            )
        )
    for index, (block, deltas) in enumerate(blocks):
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        if index == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP[answer.stop], "stop_sequence": None},
            "usage": {"output_tokens": answer.output_tokens},
        }
    )
    return [(event["type"], dumps(event)) for event in events]


def error_event(status: int, body: Any) -> Event:
    """An ``error`` event in the middle of a stream (the SDK raises its status error)."""
    return ("error", dumps(body if body is not None else error_body(status)))


def count_tokens_response(prompt: Prompt) -> dict[str, Any]:
    return {"input_tokens": prompt.input_tokens}


def model_object(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": CREATED_AT}


def models_list(models: list[str]) -> dict[str, Any]:
    return {
        "data": [model_object(m) for m in models],
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }
