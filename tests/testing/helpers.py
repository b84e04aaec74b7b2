"""Requests and SSE parsing shared by the fake-provider tests."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2

KEY = "sk-test-fake-0123456789"
TIMEOUT = 10  # an absolute bound around every socket test
OPENAI = {"authorization": f"Bearer {KEY}"}
ANTHROPIC = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-sonnet-20241022"


def chat(said: str = "one two three", **body: Any) -> dict[str, Any]:
    return {"model": GPT, "messages": [{"role": "user", "content": said}], **body}


def messages(said: str = "one two three", **body: Any) -> dict[str, Any]:
    return {
        "model": CLAUDE,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": said}],
        **body,
    }


def responses(said: str = "one two three", **body: Any) -> dict[str, Any]:
    return {"model": GPT, "input": said, **body}


#: (path, headers, body) of a streaming request in each API.
STREAMS = {
    "openai": ("/v1/chat/completions", OPENAI, chat(stream=True)),
    "anthropic": ("/v1/messages", ANTHROPIC, messages(stream=True)),
    "responses": ("/v1/responses", OPENAI, responses(stream=True)),
}
TERMINATORS = {"openai": (None, "[DONE]"), "anthropic": ("message_stop", '{"type":"message_stop"}')}


def is_terminator(event: tuple[str | None, str], api: str) -> bool:
    """Whether ``event`` is the stream's terminator (``response.completed`` carries a body)."""
    if api == "responses":
        return event[0] == "response.completed"
    return event == TERMINATORS[api]


_PER_REQUEST = re.compile(r'(?<=fake)\d{6}|(?<="created":)\d+|(?<="created_at":)\d+')


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """``event:``/``data:`` blocks as ``(event, data)``, in order.

    Ids and timestamps, which differ from one request to the next, are blanked out
    so that two answers to the same request compare equal.
    """
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event"), _PER_REQUEST.sub("0", fields["data"])))
    return events


def is_json(data: str) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


async def read_events(
    client: httpx2.AsyncClient, dialect: str
) -> tuple[httpx2.Response, list[tuple[str | None, str]]]:
    path, headers, body = STREAMS[dialect]
    response = await client.post(path, json=body, headers=headers)
    return response, parse_sse(response.content)
