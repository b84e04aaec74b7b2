"""``POST /v1/messages/count_tokens`` for targets that cannot count: an estimate. Sans-IO.

Token counting is an Anthropic endpoint; an OpenAI-dialect target has nothing like it
(OpenAI's tokenizers are not served over HTTP, and compatible servers count with their
own). Anthropic clients call it to manage their context window (Claude Code does, before
compacting a conversation), so a gateway that sends them to another model answers
rather than fails, and says that the answer is an estimate:

* the body is Anthropic's ``{"input_tokens": N}`` plus ``"estimated": true`` (SDKs keep
  fields they do not know: ``result.model_extra``), and
* the response carries ``x-gateway-token-count: estimate`` (:data:`ESTIMATE_HEADER`).

The estimate errs on the high side, which is the safe side for a context window: text
is one token per 4 ASCII characters, per 2 other characters (accented Latin, Cyrillic,
Greek...) and per character from CJK scripts on (U+2E80), each rounded up; every message
adds 4, the request 3. An image counts 1,600 tokens (what Anthropic charges at most for
an image it has resized to its default limit); a PDF 2,000 per page (its text and its
page image), pages counted in the file; tool definitions their name, description and
schema as text, plus 350 for the tool-use instructions a model is given. No tokenizer
is run: the count is close for English prose and rougher for code and other languages;
it is meant for "how full is the context", not for billing.

The request is checked as Anthropic checks it (``model``; ``messages`` a non-empty list
of user/assistant turns; content a string or blocks), with the field named in a 400.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from trio_gateway.providers.translate._common import dumps, fail

__all__ = ["ESTIMATE_HEADER", "count_tokens_estimate", "estimate_input_tokens"]

#: The response header that labels the count as an estimate (value ``estimate``).
ESTIMATE_HEADER = "x-gateway-token-count"

PER_REQUEST = 3
PER_MESSAGE = 4
PER_BLOCK = 3  # tool_use / tool_result framing
IMAGE = 1_600
PDF_PAGE = 2_000
TOOLS = 350
PER_TOOL = 10
_CJK = 0x2E80
_PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")


def count_tokens_estimate(body: Any) -> dict[str, Any]:
    """The response body for a count_tokens request (see the module docstring)."""
    return {"input_tokens": estimate_input_tokens(body), "estimated": True}


def estimate_input_tokens(body: Any) -> int:
    """An upper-leaning estimate of the input tokens of a Messages request body.

    Raises :class:`~._common.TranslationError` (400) for a body Anthropic would refuse.
    """
    if not isinstance(body, dict):
        raise fail("$", "the body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise fail("model", "is required (a string)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise fail("messages", "must be a non-empty array of messages")
    total = PER_REQUEST + _system(body.get("system"))
    for i, message in enumerate(messages):
        loc = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fail(loc, "must be an object")
        if message.get("role") not in ("user", "assistant"):
            raise fail(f"{loc}.role", "must be 'user' or 'assistant'")
        total += PER_MESSAGE + _content(message.get("content"), f"{loc}.content")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise fail("tools", "must be an array")
        if tools:
            total += TOOLS
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise fail(f"tools[{j}]", "must be an object")
            total += PER_TOOL + text_tokens(
                " ".join(
                    v if isinstance(v, str) else dumps(v)
                    for k, v in tool.items()
                    if k not in ("type", "cache_control")
                )
            )
    return total


def text_tokens(text: str) -> int:
    """Tokens of ``text``: ASCII 1 per 4 characters, others 1 per 2, CJK and on 1 each."""
    if text.isascii():
        return -(-len(text) // 4)
    ascii_chars = other = wide = 0
    for ch in text:
        code = ord(ch)
        if code < 128:
            ascii_chars += 1
        elif code < _CJK:
            other += 1
        else:
            wide += 1
    return -(-ascii_chars // 4) + -(-other // 2) + wide


def _system(system: Any) -> int:
    if system is None:
        return 0
    if isinstance(system, str):
        return text_tokens(system)
    if not isinstance(system, list):
        raise fail("system", "must be a string or an array of text blocks")
    total = 0
    for j, block in enumerate(system):
        if not isinstance(block, dict) or not isinstance(block.get("text"), str):
            raise fail(f"system[{j}]", "must be a text block")
        total += text_tokens(block["text"])
    return total


def _content(content: Any, loc: str) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        raise fail(loc, "must be a string or an array of content blocks")
    return sum(_block(block, f"{loc}[{j}]") for j, block in enumerate(content))


def _block(block: Any, loc: str) -> int:
    if not isinstance(block, dict):
        raise fail(loc, "must be a content block object")
    kind = block.get("type")
    if kind == "text":
        return text_tokens(_str(block.get("text"), f"{loc}.text"))
    if kind == "image":
        return IMAGE
    if kind == "document":
        return _document(block.get("source"))
    if kind == "tool_use":
        name = block.get("name")
        return PER_BLOCK + text_tokens(
            (name if isinstance(name, str) else "") + dumps(block.get("input") or {})
        )
    if kind == "tool_result":
        content = block.get("content")
        if content is None:
            return PER_BLOCK
        return PER_BLOCK + _content(content, f"{loc}.content")
    if kind == "thinking":
        return text_tokens(_str(block.get("thinking"), f"{loc}.thinking"))
    if kind == "redacted_thinking":
        data = block.get("data")
        return text_tokens(data) if isinstance(data, str) else 0
    if not isinstance(kind, str):
        raise fail(f"{loc}.type", "is required")
    # Server-tool blocks and newer kinds: their JSON as text.
    return PER_BLOCK + text_tokens(dumps(block))


def _str(value: Any, loc: str) -> str:
    if not isinstance(value, str):
        raise fail(loc, "must be a string")
    return value


def _document(source: Any) -> int:
    if not isinstance(source, dict):
        return PDF_PAGE
    kind = source.get("type")
    if kind == "text":
        data = source.get("data")
        return text_tokens(data) if isinstance(data, str) else 0
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return text_tokens(content)
        if isinstance(content, list):
            return sum(
                text_tokens(b["text"])
                if isinstance(b, dict) and isinstance(b.get("text"), str)
                else IMAGE
                for b in content
            )
        return 0
    if kind == "base64" and isinstance(source.get("data"), str):
        try:
            pdf = base64.b64decode(source["data"], validate=False)
        except (binascii.Error, ValueError):
            return PDF_PAGE
        return PDF_PAGE * max(1, len(_PAGE.findall(pdf)))
    return PDF_PAGE  # a URL or a file: unseen, one page
