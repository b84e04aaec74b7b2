"""Deterministic answers and both wire formats, sans-IO: streamed == whole, usage consistent."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from trio_gateway.testing.fake import anthropic, openai
from trio_gateway.testing.fake.content import (
    ANY,
    NONE,
    Prompt,
    Rejected,
    Stop,
    Tool,
    answer,
    example_value,
    pieces,
)

WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
        "detailed": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["location"],
}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "input_schema": WEATHER}]
EVENT = TypeAdapter(RawMessageStreamEvent)


def served(model: str) -> bool:
    return model != "unknown"


def openai_chat(**body) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}], **body}


def anthropic_messages(**body) -> dict:
    return {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi there"}],
        **body,
    }


def test_pieces_rebuild_the_text() -> None:
    text = "Hello from gpt-4o-mini! You said:  two  spaces\nand a line"
    assert "".join(pieces(text)) == text
    assert pieces("a b") == ("a", " b")


def test_reply_echoes_model_and_last_user_text() -> None:
    prompt, _, _ = openai.parse_chat(
        openai_chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second question"}]},
            ]
        ),
        served=served,
    )
    ans = answer(prompt)
    assert ans.text == "Hello from gpt-4o-mini! You said: second question"
    assert ans.stop is Stop.END
    assert ans.input_tokens == 6  # be brief / first / ok / second question


def test_max_tokens_truncates_to_that_many_pieces() -> None:
    prompt, _ = anthropic.parse_messages(anthropic_messages(max_tokens=3), served=served)
    ans = answer(prompt)
    assert ans.text == "Hello from claude-3-5-sonnet-20241022!"
    assert (ans.stop, ans.output_tokens) == (Stop.LENGTH, 3)
    message = anthropic.message(prompt, ans, id="msg_1")
    assert message["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("choice", "said", "called"),
    [
        (None, "please call get_weather now", "get_weather"),
        (None, "what's the weather?", None),
        (None, "get_weather_v2 is not it", None),
        (ANY, "anything", "get_weather"),
        (NONE, "call get_weather", None),
        ("lookup", "anything", "lookup"),
    ],
)
def test_tool_choice(choice: str | None, said: str, called: str | None) -> None:
    tools = (Tool("get_weather", WEATHER), Tool("lookup", {}))
    kwargs = {"tool_choice": choice} if choice is not None else {}
    ans = answer(Prompt(model="m", said=said, tools=tools, **kwargs))
    assert (ans.tool.name if ans.tool else None) == called
    assert ans.stop is (Stop.TOOL if called else Stop.END)


def test_a_tool_result_is_answered_with_text() -> None:
    body = openai_chat(
        tools=OPENAI_TOOLS,
        tool_choice="required",
        messages=[
            {"role": "user", "content": "call get_weather"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
        ],
    )
    prompt, _, _ = openai.parse_chat(body, served=served)
    assert answer(prompt).text == "Hello from gpt-4o-mini! The tool said: sunny, 21C"
    body = anthropic_messages(
        tools=ANTHROPIC_TOOLS,
        messages=[
            {"role": "user", "content": "call get_weather"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "x"}]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": "rainy"}],
            },
        ],
    )
    prompt, _ = anthropic.parse_messages(body, served=served)
    assert answer(prompt).text == "Hello from claude-3-5-sonnet-20241022! The tool said: rainy"


def test_example_arguments_follow_the_schema() -> None:
    assert example_value(WEATHER) == {
        "location": "test",
        "unit": "celsius",
        "days": 1,
        "detailed": True,
        "tags": [],
    }
    assert example_value({"type": "object"}) == {}
    assert example_value({"type": ["null", "number"], "exclusiveMinimum": 0}) == 1
    assert example_value({"anyOf": [{"type": "integer"}, {"type": "string"}]}) == 1
    assert example_value({"type": "array", "minItems": 2, "items": {"const": 4}}) == [4, 4]


# --- OpenAI --------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [None, OPENAI_TOOLS])
def test_openai_stream_matches_the_whole_answer(tools: list | None) -> None:
    said = "call get_weather" if tools else "hi there"
    body = openai_chat(messages=[{"role": "user", "content": said}])
    if tools:
        body["tools"] = tools
    prompt, _, _ = openai.parse_chat(body, served=served)
    ans = answer(prompt)
    whole = ChatCompletion.model_validate(
        openai.completion(prompt, ans, id="chatcmpl-1", created=1)
    )
    events = openai.stream_events(prompt, ans, id="chatcmpl-1", created=1, include_usage=True)
    assert all(name is None for name, _ in events)
    chunks = [ChatCompletionChunk.model_validate_json(data) for _, data in events]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    if tools:
        call = whole.choices[0].message.tool_calls[0]
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert deltas[0].id == call.id and deltas[0].function.name == "get_weather"
        assert len(deltas) > 3  # arguments arrive in pieces
        assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
        assert json.loads(call.function.arguments)["location"] == "test"
        assert whole.choices[0].finish_reason == "tool_calls"
    usage = whole.usage
    assert usage.completion_tokens == len([c for c in chunks if c.choices]) - 2 - (
        1 if tools else 0
    )
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_openai_stream_without_usage_has_no_usage_field() -> None:
    prompt, _, _ = openai.parse_chat(openai_chat(), served=served)
    events = openai.stream_events(prompt, answer(prompt), id="c", created=1, include_usage=False)
    assert all("usage" not in json.loads(data) for _, data in events)
    assert json.loads(events[-1][1])["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([], 400, "We could not parse the JSON body"),
        ({"messages": []}, 400, "you must provide a model parameter"),
        ({"model": "gpt-4o-mini"}, 400, "Missing required parameter: 'messages'."),
        ({"model": "gpt-4o-mini", "messages": []}, 400, "too short"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "x"}]}, 400, "'messages[0].role'"),
        ({"model": "unknown", "messages": [{"role": "user"}]}, 404, "The model `unknown` does"),
    ],
)
def test_openai_rejects_what_openai_rejects(body: object, status: int, message: str) -> None:
    with pytest.raises(Rejected) as info:
        openai.parse_chat(body, served=served)
    assert info.value.status == status
    assert message in openai.rejected_body(info.value)["error"]["message"]


def test_openai_error_bodies() -> None:
    assert openai.error_body(429)["error"]["code"] == "rate_limit_exceeded"
    assert openai.error_body(500)["error"]["type"] == "server_error"
    assert openai.error_body(418)["error"]["type"] == "invalid_request_error"
    assert set(openai.error_body(503)["error"]) == {"message", "type", "param", "code"}


def test_openai_auth() -> None:
    openai.check_auth({"authorization": "Bearer sk-1"}, "sk-1")
    openai.check_auth({"api-key": "sk-1"}, "sk-1")
    openai.check_auth({"authorization": "Bearer anything"}, None)
    for headers in ({}, {"authorization": "sk-1"}, {"authorization": "Bearer sk-2"}):
        with pytest.raises(Rejected) as info:
            openai.check_auth(headers, "sk-1")
        assert info.value.status == 401


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_are_deterministic(encoding: str) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a b", "c"], "encoding_format": encoding}
    result = openai.embeddings(body, served=served)
    assert result["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vectors = [d["embedding"] for d in result["data"]]
    if encoding == "base64":  # the SDK asks for base64 and decodes it itself
        vectors = [list(struct.unpack("<1536f", base64.b64decode(v))) for v in vectors]
    else:
        CreateEmbeddingResponse.model_validate(result)
    assert all(len(v) == 1536 for v in vectors)
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-3
    again = openai.embeddings({**body, "encoding_format": "float"}, served=served)
    assert again["data"][1]["embedding"] == pytest.approx(vectors[1], abs=1e-6)
    small = openai.embeddings({**body, "dimensions": 8, "encoding_format": "float"}, served=served)
    assert len(small["data"][0]["embedding"]) == 8


# --- Anthropic --------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [None, ANTHROPIC_TOOLS])
def test_anthropic_stream_matches_the_whole_message(tools: list | None) -> None:
    said = "use get_weather" if tools else "hi there"
    body = anthropic_messages(messages=[{"role": "user", "content": said}], system="be brief")
    if tools:
        body["tools"] = tools
    prompt, stream = anthropic.parse_messages(body, served=served)
    assert stream is False and prompt.input_tokens == 4
    ans = answer(prompt)
    whole = Message.model_validate(anthropic.message(prompt, ans, id="msg_1"))
    events = anthropic.stream_events(prompt, ans, id="msg_1")
    assert [name for name, data in events] == [json.loads(data)["type"] for _, data in events]
    assert [name for name, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    parsed = [EVENT.validate_json(data) for name, data in events if name != "ping"]
    kinds = [e.type for e in parsed]
    assert kinds[-2:] == ["content_block_stop", "message_delta"]
    start = parsed[0].message
    assert start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens == whole.usage.input_tokens
    text = "".join(
        e.delta.text
        for e in parsed
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == whole.content[0].text
    assert parsed[-1].delta.stop_reason == whole.stop_reason
    assert parsed[-1].usage.output_tokens == whole.usage.output_tokens
    if tools:
        assert whole.stop_reason == "tool_use"
        tool = whole.content[1]
        starts = [e for e in parsed if e.type == "content_block_start"]
        assert [s.index for s in starts] == [0, 1]
        assert starts[1].content_block.type == "tool_use" and starts[1].content_block.id == tool.id
        partial = [
            e.delta.partial_json
            for e in parsed
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        assert len(partial) > 3 and json.loads("".join(partial)) == tool.input
        assert tool.input["location"] == "test"
    assert anthropic.TERMINATOR == ("message_stop", '{"type":"message_stop"}')


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("x", 400, "error parsing the body"),
        ({"max_tokens": 5, "messages": []}, 400, "model: Field required"),
        ({"model": "claude-x", "messages": []}, 400, "max_tokens: Field required"),
        ({"model": "claude-x", "max_tokens": 0, "messages": []}, 400, "max_tokens: Input should"),
        ({"model": "claude-x", "max_tokens": 5}, 400, "messages: Field required"),
        ({"model": "claude-x", "max_tokens": 5, "messages": []}, 400, "at least one message"),
        (
            {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "system", "content": ""}]},
            400,
            "messages.0.role",
        ),
        (
            {"model": "unknown", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            404,
            "model: unknown",
        ),
    ],
)
def test_anthropic_rejects_what_anthropic_rejects(body: object, status: int, message: str) -> None:
    with pytest.raises(Rejected) as info:
        anthropic.parse_messages(body, served=served)
    assert info.value.status == status
    error = anthropic.rejected_body(info.value)
    assert error["type"] == "error" and message in error["error"]["message"]
    assert error["error"]["type"] == (
        "not_found_error" if status == 404 else "invalid_request_error"
    )


def test_anthropic_headers() -> None:
    good = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    anthropic.check_headers(good, "k")
    anthropic.check_headers({"authorization": "Bearer k", "anthropic-version": "2026-10-21"}, "k")
    cases = [
        ({"anthropic-version": "2023-06-01"}, 401, "x-api-key header is required"),
        ({**good, "x-api-key": "other"}, 401, "invalid x-api-key"),
        ({"x-api-key": "k"}, 400, "anthropic-version: header is required"),
        ({**good, "anthropic-version": "2022-01-01"}, 400, "invalid version"),
        ({**good, "anthropic-version": "latest"}, 400, "invalid version"),
    ]
    for headers, status, message in cases:
        with pytest.raises(Rejected) as info:
            anthropic.check_headers(headers, "k")
        assert info.value.status == status and message in info.value.message


def test_anthropic_error_bodies() -> None:
    assert anthropic.error_body(529) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert anthropic.error_body(429)["error"]["type"] == "rate_limit_error"
    assert anthropic.error_body(503)["error"]["type"] == "api_error"
    assert anthropic.error_body(401)["error"]["type"] == "authentication_error"
