"""Replay what the gateway sends a client through the official SDKs' own parsers.

A translation is only right if the client's SDK accepts it: these helpers feed
response bodies to the SDKs' pydantic models and client streams to their real
``Stream`` classes (over an in-memory ``httpx2.Response``) and accumulators.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pydantic
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai._types import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStream
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent

from trio_gateway.providers.sse import SSEDecoder

_openai = openai.OpenAI(api_key="test", base_url="http://gateway.test/v1", max_retries=0)
_anthropic = anthropic.Anthropic(api_key="test", base_url="http://gateway.test", max_retries=0)
_event_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
_responses_adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


def events(data: bytes | str) -> list[tuple[str | None, Any]]:
    """SSE as comparable values: (event, parsed JSON | "[DONE]"), comments as (":", text)."""
    raw = data.encode() if isinstance(data, str) else data
    decoder = SSEDecoder(comments=True)
    out: list[tuple[str | None, Any]] = []
    for e in decoder.feed(raw) + decoder.flush():
        if e.comment is not None and not e.data:
            out.append((":", e.comment))
        elif e.data == "[DONE]":
            out.append((e.event, e.data))
        else:
            out.append((e.event, json.loads(e.data)))
    return out


def _response(body: bytes, path: str) -> httpx2.Response:
    return httpx2.Response(
        200,
        content=body,
        headers={"content-type": "text/event-stream"},
        request=httpx2.Request("POST", "http://gateway.test" + path),
    )


def check_openai_response(body: dict) -> ChatCompletion:
    return ChatCompletion.model_validate(body)


def check_anthropic_response(body: dict) -> Message:
    return Message.model_validate(body)


def replay_openai_stream(body: bytes) -> tuple[ChatCompletion | None, Exception | None]:
    """The openai SDK reads ``body`` as a chat-completion stream.

    Returns the accumulated completion (when the stream finished) and the exception
    the SDK raised (an error event), if any.
    """
    stream = openai.Stream(
        cast_to=ChatCompletionChunk,
        response=_response(body, "/v1/chat/completions"),
        client=_openai,
    )
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    finished = False
    try:
        for chunk in stream:
            ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True))
            state.handle_chunk(chunk)
            finished = finished or any(c.finish_reason for c in chunk.choices)
    except openai.APIError as exc:
        return None, exc
    return (state.get_final_completion() if finished else None), None


def replay_anthropic_stream(body: bytes) -> tuple[Message | None, Exception | None]:
    """The anthropic SDK reads ``body`` as a Messages stream; see :func:`replay_openai_stream`."""
    stream = anthropic.Stream(
        cast_to=RawMessageStreamEvent,
        response=_response(body, "/v1/messages"),
        client=_anthropic,
    )
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    stopped = False
    try:
        for event in stream:
            _event_adapter.validate_python(event.model_dump(exclude_unset=True))
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
            stopped = stopped or event.type == "message_stop"
    except anthropic.APIStatusError as exc:
        return None, exc
    if snapshot is None or not stopped:
        return None, None
    return Message.model_validate(snapshot.model_dump()), None


def check_responses_response(body: dict) -> Response:
    return Response.model_validate(body)


def replay_responses_stream(body: bytes) -> tuple[Response | None, Any]:
    """The openai SDK reads ``body`` as a Responses stream (``client.responses.stream``).

    Every event must validate as the SDK's ``ResponseStreamEvent`` and go through its
    stream state (which checks the lifecycle: ids, indices, items before their
    deltas). Returns the final response (``response.completed``) and how the stream
    failed: the ``APIError`` the SDK raised (an ``error`` event), or the
    ``response.failed`` / ``response.incomplete`` event.
    """
    raw = openai.Stream(
        cast_to=ResponseStreamEvent,
        response=_response(body, "/v1/responses"),
        client=_openai,
    )
    stream: ResponseStream[Any] = ResponseStream(
        raw_stream=raw, text_format=omit, input_tools=omit, starting_after=None
    )
    ended: Any = None
    last = -1
    try:
        for event in stream:
            _responses_adapter.validate_python(
                event.model_dump(exclude_unset=True, by_alias=True, warnings=False)
            )
            assert event.sequence_number > last, (event.sequence_number, last)
            last = event.sequence_number
            if event.type in ("response.failed", "response.incomplete"):
                ended = event
    except openai.APIError as exc:
        return None, exc
    final = stream._state._completed_response
    if final is not None:
        Response.model_validate(final.model_dump(by_alias=True, warnings=False))
    return final, ended
