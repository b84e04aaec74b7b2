"""What a fake provider says: deterministic answers, token counts and tool calls.

Sans-IO and shared by both dialects (:mod:`.openai`, :mod:`.anthropic`), which
parse a request into a :class:`Prompt` and render an :class:`Answer`.

* The reply is ``Hello from <model>! You said: <last user text>`` (``The tool
  said: <result>`` when the last turn is a tool result), so a test can assert on
  what arrived where.
* A streamed answer is cut into *pieces*: one per word of the text (with its
  leading space), and :data:`ARGUMENT_PIECE` characters at a time of the tool
  arguments. Usage counts one token per whitespace-separated word of the input
  and one per piece of the output, so streamed and whole answers agree.
* ``max_tokens`` smaller than the answer truncates the text to that many pieces
  and the answer ends for ``length``.
* A tool is called when the request offers tools and either the tool choice
  forces one (OpenAI ``required`` or a named function; Anthropic ``any`` or a
  named tool) or, with an automatic choice, the last user text names a tool
  (``"call get_weather"``). Its arguments are built from the tool's JSON schema:
  every declared property, with a value of the declared type (``"test"``, ``1``,
  ``true``, the first ``enum`` value, the ``default``...). A tool result as the
  last turn is always answered with text, so agent loops end.
"""

from __future__ import annotations

import enum
import json
import math
import random
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

#: One server-sent event: ``(event name or None, data)``.
Event = tuple[str | None, str]

#: Characters of tool-call arguments per streamed piece.
ARGUMENT_PIECE = 8
_PIECE = re.compile(r"\s*\S+")


class Stop(enum.Enum):
    END = "end"
    LENGTH = "length"
    TOOL = "tool"


class Rejected(Exception):
    """The request is one the real API refuses: ``status`` with a message in its dialect.

    ``type``/``code``/``param`` are OpenAI's error fields; ``None`` picks the usual
    value for ``status`` in each dialect.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param


@attrs.frozen
class Tool:
    name: str
    schema: Mapping[str, Any] = attrs.field(factory=dict)


#: Tool choice: ``AUTO`` (call a tool the user names), ``NONE``, ``ANY`` (the first
#: tool) or a tool name.
AUTO, NONE, ANY = "\x00auto", "\x00none", "\x00any"


@attrs.frozen(kw_only=True)
class Prompt:
    """A request, as far as the answer depends on it."""

    model: str
    said: str = ""
    tool_result: str | None = None
    input_tokens: int = 0
    tools: tuple[Tool, ...] = ()
    tool_choice: str = AUTO
    max_tokens: int | None = None


@attrs.frozen(kw_only=True)
class ToolCall:
    name: str
    arguments: str
    pieces: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Answer:
    """What the fake answers; ``text_pieces`` and ``tool.pieces`` are the stream."""

    text_pieces: tuple[str, ...]
    tool: ToolCall | None
    stop: Stop
    input_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.text_pieces) + (len(self.tool.pieces) if self.tool else 0)


def count_tokens(text: str) -> int:
    return len(text.split())


def pieces(text: str) -> tuple[str, ...]:
    """``text`` as stream pieces: each word with the whitespace before it."""
    return tuple(_PIECE.findall(text))


def reply_text(prompt: Prompt) -> str:
    if prompt.tool_result is not None:
        return f"Hello from {prompt.model}! The tool said: {prompt.tool_result.strip()}"
    said = prompt.said.strip()
    return f"Hello from {prompt.model}! You said: {said}" if said else f"Hello from {prompt.model}!"


def answer(prompt: Prompt) -> Answer:
    tool = choose_tool(prompt)
    if tool is not None:
        arguments = json.dumps(example_value(dict(tool.schema)), separators=(",", ":"))
        call = ToolCall(
            name=tool.name,
            arguments=arguments,
            pieces=tuple(
                arguments[i : i + ARGUMENT_PIECE] for i in range(0, len(arguments), ARGUMENT_PIECE)
            ),
        )
        return Answer(
            text_pieces=pieces(f"Calling {tool.name}."),
            tool=call,
            stop=Stop.TOOL,
            input_tokens=prompt.input_tokens,
        )
    text = pieces(reply_text(prompt))
    stop = Stop.END
    if prompt.max_tokens is not None and len(text) > prompt.max_tokens:
        text, stop = text[: prompt.max_tokens], Stop.LENGTH
    return Answer(text_pieces=text, tool=None, stop=stop, input_tokens=prompt.input_tokens)


def choose_tool(prompt: Prompt) -> Tool | None:
    if not prompt.tools or prompt.tool_result is not None or prompt.tool_choice == NONE:
        return None
    if prompt.tool_choice == ANY:
        return prompt.tools[0]
    if prompt.tool_choice != AUTO:
        return next((t for t in prompt.tools if t.name == prompt.tool_choice), None)
    for tool in prompt.tools:
        if re.search(rf"(?<![\w-]){re.escape(tool.name)}(?![\w-])", prompt.said):
            return tool
    return None


def example_value(schema: Any, depth: int = 0) -> Any:
    """A value valid for a (simple) JSON schema, the same every time."""
    if not isinstance(schema, dict) or depth > 8:
        return "test"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_value(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    match kind:
        case "object":
            props = schema.get("properties")
            if not isinstance(props, dict):
                return {}
            return {name: example_value(sub, depth + 1) for name, sub in props.items()}
        case "array":
            count = schema.get("minItems", 0)
            count = count if isinstance(count, int) and 0 <= count <= 16 else 0
            return [example_value(schema.get("items"), depth + 1) for _ in range(count)]
        case "integer" | "number":
            low = schema.get("minimum", schema.get("exclusiveMinimum"))
            value = low if isinstance(low, int | float) and not isinstance(low, bool) else 1
            if "exclusiveMinimum" in schema and "minimum" not in schema:
                value += 1
            return int(value) if kind == "integer" else value
        case "boolean":
            return True
        case "null":
            return None
    return "test"


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the ``text`` of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``dimensions``."""
    rng = random.Random(f"{dimensions}:{text}")
    vector = [rng.uniform(-1.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [round(x / norm, 6) for x in vector]


def pack_floats(values: Sequence[float]) -> bytes:
    """Little-endian float32, as the embeddings API's ``encoding_format: base64`` sends."""
    return struct.pack(f"<{len(values)}f", *values)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def encode_event(event: Event) -> bytes:
    name, data = event
    head = f"event: {name}\n" if name is not None else ""
    return f"{head}data: {data}\n\n".encode()


def malformed(event: Event) -> Event:
    """``event`` with its data cut in half: not valid JSON any more."""
    name, data = event
    return (name, data[: max(1, len(data) // 2)])
