"""Translator behaviour the golden transcripts do not show: lifecycle and edge cases."""

from __future__ import annotations

import json
import logging
import time

import anthropic
import openai
import pytest

from tests.providers import sdk
from trio_gateway.errors import UpstreamError, UpstreamProtocolError
from trio_gateway.providers.formats import ApiFormat
from trio_gateway.providers.translate import (
    AnthropicToOpenAI,
    OpenAIToAnthropic,
    TranslationError,
    translator,
)

OPENAI_REQUEST = {
    "model": "claude",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}
ANTHROPIC_REQUEST = {
    "model": "gpt",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
}

MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
)
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}'
CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
)
FINISH_CHUNK = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
)
TEXT_DELTA = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
)
MESSAGE_DELTA = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":1}}\n\n'
)


def o2a() -> OpenAIToAnthropic:
    t = translator("openai", "anthropic", now=1, request_id="r")
    assert isinstance(t, OpenAIToAnthropic)
    t.request(dict(OPENAI_REQUEST))
    return t


def a2o(kind: str = "openai") -> AnthropicToOpenAI:
    t = translator("anthropic", kind, request_id="r")
    assert isinstance(t, AnthropicToOpenAI)
    t.request(dict(ANTHROPIC_REQUEST))
    return t


# --- factory -----------------------------------------------------------------------


def test_no_translator_for_the_same_dialect() -> None:
    assert translator(ApiFormat.OPENAI, ApiFormat.OPENAI) is None
    assert translator("openai", "azure-openai") is None
    assert translator("openai", "openai-compatible") is None
    assert translator("anthropic", "anthropic") is None


def test_factory_picks_the_direction_and_the_clock() -> None:
    t = translator("openai", "anthropic")
    assert isinstance(t, OpenAIToAnthropic)
    assert abs(t.created - time.time()) < 5
    assert isinstance(translator("anthropic", "openai-compatible"), AnthropicToOpenAI)


# --- stream lifecycle --------------------------------------------------------------


def test_terminal_events_come_with_the_terminator_and_finish_adds_nothing() -> None:
    stream = o2a().stream()
    out = stream.feed(MESSAGE_START + MESSAGE_STOP + b"\n\n")
    assert out.endswith(b"data: [DONE]\n\n")
    assert stream.complete
    assert stream.finish() == b""
    assert stream.fail("upstream_error", "late") == b""  # nothing after a complete stream
    assert stream.feed(CHUNK) == b""


@pytest.mark.parametrize(
    ("make", "head", "tail"),
    [
        (o2a, MESSAGE_START, MESSAGE_STOP),  # no blank line after message_stop
        (a2o, CHUNK, b"data: [DONE]"),  # no blank line after [DONE]
    ],
)
def test_finish_completes_a_stream_whose_last_event_lacks_its_blank_line(
    make: object, head: bytes, tail: bytes
) -> None:
    stream = make().stream()  # type: ignore[operator]
    stream.feed(head + tail)
    assert not stream.complete
    assert stream.finish()
    assert stream.complete


def test_finish_ignores_a_cut_off_last_event() -> None:
    stream = a2o().stream()
    stream.feed(CHUNK + b'data: {"id":"c1","choi')
    assert stream.finish() == b""
    assert not stream.complete and stream.error is None
    end = stream.fail("upstream_error", "the provider's stream ended before it was complete")
    final, error = sdk.replay_anthropic_stream(b"")  # sanity: empty is no message
    assert final is None and error is None
    assert end.startswith(b"event: error\n")
    assert stream.fail("upstream_error", "twice") == b""


def test_fail_before_any_output_is_a_lone_error_event() -> None:
    stream = o2a().stream()
    out = stream.fail("upstream_timeout", "no first byte")
    _, error = sdk.replay_openai_stream(out)
    assert isinstance(error, openai.APIError)
    stream = a2o().stream()
    _, error = sdk.replay_anthropic_stream(stream.fail("upstream_timeout", "no first byte"))
    assert isinstance(error, anthropic.APIStatusError)


def test_provider_error_event_sets_error_and_ends_the_stream() -> None:
    stream = o2a().stream()
    out = stream.feed(
        MESSAGE_START
        + b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error","message":"bad"}}\n\n'
    )
    assert isinstance(stream.error, UpstreamError)
    assert not stream.error.retryable
    assert not stream.complete
    assert b'"error":{"message":"bad","type":"invalid_request_error"' in out
    assert stream.fail("upstream_error", "again") == b""

    stream = a2o().stream()
    stream.feed(CHUNK + b'data: {"error":{"message":"slow down","code":"rate_limit_exceeded"}}\n\n')
    assert isinstance(stream.error, UpstreamError) and stream.error.retryable


@pytest.mark.parametrize("make", [o2a, a2o])
def test_an_event_that_cannot_be_read_is_skipped_and_counted(make: object) -> None:
    stream = make().stream()  # type: ignore[operator]
    assert stream.feed(b"data: <html>oops</html>\n\n") == b""
    assert stream.error is None and stream.skipped == 1
    assert stream.feed(CHUNK if make is a2o else MESSAGE_START) != b""  # the stream goes on


def test_an_event_of_the_wrong_shape_is_skipped_whole() -> None:
    stream = o2a().stream()
    out = stream.feed(
        MESSAGE_START + b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n'
    )
    assert stream.error is None and stream.skipped == 1
    out += stream.feed(MESSAGE_STOP + b"\n\n")
    final, error = sdk.replay_openai_stream(out)
    assert error is None and final is not None


@pytest.mark.parametrize("make", [o2a, a2o])
def test_a_clean_close_after_the_finish_reason_ends_the_stream_properly(make: object) -> None:
    stream = make().stream()  # type: ignore[operator]
    if make is a2o:
        out = stream.feed(CHUNK + FINISH_CHUNK)
        assert not stream.complete
        out += stream.finish()
        assert stream.complete and out.endswith(b'data: {"type":"message_stop"}\n\n')
    else:
        out = stream.feed(MESSAGE_START + TEXT_DELTA + MESSAGE_DELTA)
        assert not stream.complete
        out += stream.finish()
        assert stream.complete and out.endswith(b"data: [DONE]\n\n")
        final, error = sdk.replay_openai_stream(out)
        assert error is None and final is not None


def test_a_close_without_a_finish_reason_is_not_complete() -> None:
    stream = a2o().stream()
    stream.feed(CHUNK)
    stream.finish()
    assert not stream.complete


def test_unknown_anthropic_events_are_ignored_and_message_start_counted_once() -> None:
    stream = o2a().stream()
    out = stream.feed(
        MESSAGE_START
        + b'event: future_event\ndata: {"type":"future_event"}\n\n'
        + MESSAGE_START
        + MESSAGE_STOP
        + b"\n\n"
    )
    assert out.count(b'"role":"assistant"') == 1
    final, error = sdk.replay_openai_stream(out)
    assert error is None and final is not None


def test_openai_chunks_for_other_choices_are_ignored() -> None:
    stream = a2o().stream()
    other = CHUNK.replace(b'"index":0', b'"index":1')
    out = stream.feed(CHUNK + other + b"data: [DONE]\n\n")
    final, _ = sdk.replay_anthropic_stream(out)
    assert final is not None and final.content[0].text == "hi"  # type: ignore[union-attr]


def test_tool_calls_numbered_zero_each_time_are_kept_apart() -> None:
    stream = a2o("openai-compatible").stream()
    call = (
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"%s","function":'
        b'{"name":"f","arguments":"{}"}}]}}]}\n\n'
    )
    out = stream.feed(call % b"a" + call % b"b" + b"data: [DONE]\n\n")
    final, _ = sdk.replay_anthropic_stream(out)
    assert final is not None
    assert [b.id for b in final.content] == ["a", "b"]  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


def test_ping_maps_both_ways() -> None:
    stream = o2a().stream()
    assert stream.feed(MESSAGE_START + b'event: ping\ndata: {"type": "ping"}\n\n').endswith(
        b": ping\n\n"
    )
    stream = a2o().stream()
    assert stream.feed(b": keep-alive\n\n") == b": ping\n\n"
    assert stream.feed(CHUNK + b": keep-alive\n\n").endswith(
        b'event: ping\ndata: {"type":"ping"}\n\n'
    )


# --- requests and responses --------------------------------------------------------


def test_invalid_tool_arguments_become_an_empty_object() -> None:
    t = translator("openai", "anthropic")
    assert t is not None
    body = t.request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "r"},
            ],
        }
    )
    assert body["messages"][1]["content"][0]["input"] == {}


@pytest.mark.parametrize(
    ("client", "body", "message"),
    [
        ("openai", {"model": "m", "messages": []}, "messages: must be a non-empty array"),
        ("openai", {"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
        (
            "openai",
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
                ],
            },
            "not file_id",
        ),
        (
            "openai",
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}],
                    }
                ],
            },
            "http(s) URL or a base64 data URL",
        ),
        (
            "anthropic",
            {"model": "m", "messages": [{"role": "system", "content": "x"}]},
            "role must be",
        ),
        (
            "anthropic",
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ],
            },
            "image source 'file'",
        ),
    ],
)
def test_untranslatable_requests_raise_with_a_location(
    client: str, body: dict, message: str
) -> None:
    t = translator(client, "anthropic" if client == "openai" else "openai")
    assert t is not None
    with pytest.raises(TranslationError) as info:
        t.request(body)
    assert message in info.value.message
    assert info.value.status == 400
    assert info.value.details


@pytest.mark.parametrize("make", [o2a, a2o])
def test_broken_success_bodies_raise_protocol_errors(make: object) -> None:
    with pytest.raises(UpstreamProtocolError):
        make().response({"unexpected": True})  # type: ignore[operator]


def test_error_with_a_success_status_or_empty_body() -> None:
    status, body = o2a().error(200, b"")
    assert status == 502
    assert json.loads(body)["error"]["message"] == "upstream returned HTTP 502 with an empty body"
    status, body = a2o().error(500, b'{"error": "plain string"}')
    assert (status, json.loads(body)["error"]) == (
        500,
        {"type": "api_error", "message": "plain string"},
    )
    status, body = a2o().error(400, b'[{"error": {"code": 400, "message": "gemini style"}}]')
    assert json.loads(body)["error"]["message"] == "gemini style"


def test_dropped_fields_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    t = translator("openai", "anthropic")
    assert t is not None
    with caplog.at_level(logging.DEBUG, logger="trio_gateway.providers.translate"):
        t.request({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 1, "n": 1})
    dropped = [getattr(r, "fields", {}).get("dropped") for r in caplog.records]
    assert ["n", "seed"] in dropped


def test_reasoning_effort_without_room_to_think() -> None:
    t = translator("openai", "anthropic")
    assert t is not None
    body = t.request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "reasoning_effort": "high",
            "max_tokens": 1500,
            "temperature": 0.5,
        }
    )
    assert "thinking" not in body and body["temperature"] == 0.5


def test_anthropic_thinking_passthrough_for_openai_clients() -> None:
    t = translator("openai", "anthropic")
    assert t is not None
    body = t.request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5000,
            "thinking": {"type": "enabled", "budget_tokens": 3000},
            "top_p": 0.5,
        }
    )
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert "top_p" not in body


def test_allowed_tools_choice_filters_the_tools() -> None:
    t = translator("openai", "anthropic")
    assert t is not None
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b", "c")]
    body = t.request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": tools,
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "b"}}],
                },
            },
        }
    )
    assert [tool["name"] for tool in body["tools"]] == ["b"]
    assert body["tool_choice"] == {"type": "any"}
