"""Responses API translation beyond the golden transcripts: stream endings, the
passthrough stream, the watch, request edge cases, and a property over random streams.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import ResponseErrorEvent, ResponseFailedEvent

from tests.providers import sdk
from trio_gateway.errors import UpstreamError
from trio_gateway.providers.formats import Api, ApiFormat, responses_error_event
from trio_gateway.providers.translate import (
    ResponsesPassthroughStream,
    ResponsesToAnthropic,
    ResponsesToOpenAI,
    TranslationError,
    translator,
)
from trio_gateway.providers.watch import MALFORMED, StreamWatch

REQUEST: dict[str, Any] = {"model": "m", "input": "hi", "stream": True}


def chunk(delta: dict, finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = (
    b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
)
DONE = b"data: [DONE]\n\n"


def to_chat(kind: str = "openai-compatible", body: dict | None = None) -> ResponsesToOpenAI:
    t = translator(Api.RESPONSES, kind, now=1, request_id="r")
    assert isinstance(t, ResponsesToOpenAI)
    t.request(dict(body or REQUEST))
    return t


def to_anthropic(body: dict | None = None) -> ResponsesToAnthropic:
    t = translator("responses", "anthropic", now=1, request_id="r")
    assert isinstance(t, ResponsesToAnthropic)
    t.request(dict(body or REQUEST))
    return t


def events(body: bytes) -> list[tuple[str | None, Any]]:
    return sdk.events(body)


# --- the factory ---------------------------------------------------------------------------


def test_the_factory_picks_the_provider_api():
    assert to_chat().provider_api is Api.CHAT
    assert to_anthropic().provider_api is Api.MESSAGES
    # Api.CHAT / Api.MESSAGES are the dialects they always were.
    assert translator(Api.CHAT, "openai") is None
    assert translator(Api.MESSAGES, "anthropic") is None
    assert translator(Api.CHAT, "anthropic") is not None


def test_openai_kinds_get_max_completion_tokens_others_max_tokens():
    body = {**REQUEST, "max_output_tokens": 9}
    assert to_chat("openai", body).request(body)["max_completion_tokens"] == 9
    assert to_chat("azure-openai", body).request(body)["max_completion_tokens"] == 9
    assert to_chat("openai-compatible", body).request(body)["max_tokens"] == 9


# --- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"model": "m"}, "input: is required"),
        ({"model": "m", "input": []}, "input: must not be empty"),
        ({"model": "m", "input": 5}, "input: must be a string or an array"),
        ({"model": "m", "instructions": 3, "input": "x"}, "instructions: must be a string"),
        (
            {"model": "m", "input": [{"role": "system", "content": "only rules"}]},
            "input: has no message for the model to answer",
        ),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id: must be a non-empty string",
        ),
        (
            {
                "model": "m",
                "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}],
            },
            "input[0].arguments: must be a string",
        ),
        (
            {"model": "m", "input": "x", "tools": [{"type": "function"}]},
            "tools[0].name: must be a non-empty string",
        ),
        (
            {"model": "m", "input": "x", "tools": [{"type": "custom", "name": "grammar"}]},
            "tools[0].type: 'custom' is a built-in tool",
        ),
        ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice: must be"),
        (
            {"model": "m", "input": [{"type": "compaction", "encrypted_content": "x"}]},
            "input[0].type: 'compaction' items",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": [{"type": "input_file", "file_url": "https://x"}]}
                ],
            },
            "input[0].content[0].file_url: this target takes files inline only",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}
                ],
            },
            "input[0].content[0].file_id: not supported by this target",
        ),
        (
            {
                "model": "m",
                "input": [
                    {"role": "user", "content": "x"},
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                ],
            },
            "input[1]: function calls ['c'] have no function_call_output",
        ),
    ],
)
def test_requests_that_cannot_be_carried_say_where(body: dict, where: str) -> None:
    for make in (
        lambda: translator("responses", "openai-compatible"),
        lambda: translator("responses", "anthropic"),
    ):
        t = make()
        assert t is not None
        with pytest.raises(TranslationError) as info:
            t.request(body)
        assert where in info.value.message
        assert info.value.status == 400
        assert info.value.details and info.value.details[0].loc == where.split(":")[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("previous_response_id", "resp_1"),
        ("conversation", {"id": "conv_1"}),
        ("store", True),
        ("background", True),
        ("prompt", {"id": "pmpt_1"}),
    ],
)
def test_each_stateful_feature_is_a_400_naming_it(field: str, value: Any) -> None:
    for kind in ("openai-compatible", "anthropic"):
        t = translator("responses", kind)
        assert t is not None
        with pytest.raises(TranslationError) as info:
            t.request({**REQUEST, field: value})
        assert info.value.message.startswith(f"{field}: not supported by this target")


def test_store_false_and_no_background_are_fine_and_the_answer_says_store_false():
    t = to_chat(body={**REQUEST, "store": False, "background": False, "stream": False})
    answer = t.response(
        {
            "id": "chatcmpl-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        }
    )
    assert answer["store"] is False
    assert sdk.check_responses_response(answer).output_text == "ok"


def test_a_developer_message_stays_one_for_openai_and_becomes_system_elsewhere():
    body = {
        **REQUEST,
        "input": [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"}],
    }
    assert to_chat("openai", body).request(body)["messages"][0]["role"] == "developer"
    assert to_chat("openai-compatible", body).request(body)["messages"][0]["role"] == "system"


def test_the_client_body_is_not_modified():
    body = {
        **REQUEST,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "1"},
        ],
        "tools": [{"type": "function", "name": "f"}],
    }
    before = json.dumps(body, sort_keys=True)
    to_anthropic(body)
    to_chat(body=body)
    assert json.dumps(body, sort_keys=True) == before


# --- stream endings ------------------------------------------------------------------------


def test_fail_after_content_is_response_failed_with_the_response_so_far():
    stream = to_chat().stream()
    head = stream.feed(chunk({"role": "assistant", "content": "Hel"}))
    tail = stream.fail("upstream_timeout", "no data from the provider for 30 s")
    assert not stream.complete
    final, ended = sdk.replay_responses_stream(head + tail)
    assert final is None and isinstance(ended, ResponseFailedEvent)
    assert ended.response.status == "failed"
    assert ended.response.error is not None and ended.response.error.code == "server_error"
    assert ended.response.error.message == "no data from the provider for 30 s"
    [message] = ended.response.output
    assert message.type == "message" and message.status == "incomplete"
    assert message.content[0].text == "Hel"  # type: ignore[union-attr]
    # One ending: nothing more after it.
    assert stream.fail("x", "y") == b"" and stream.feed(DONE) == b"" and stream.finish() == b""


def test_fail_before_anything_is_an_error_event_the_sdk_raises():
    stream = to_chat().stream()
    out = stream.fail("upstream_timeout", "too slow")
    [(name, data)] = events(out)
    assert name == "error"
    ResponseErrorEvent.model_validate(data)  # the documented, flat shape
    assert data["error"]["message"] == "too slow"  # and the nested one OpenAI sends
    _, raised = sdk.replay_responses_stream(out)
    assert isinstance(raised, openai.APIError) and "too slow" in str(raised)


def test_fail_after_complete_sends_nothing():
    stream = to_chat().stream()
    stream.feed(chunk({"content": "a"}, "stop") + USAGE + DONE)
    assert stream.complete
    assert stream.fail("x", "y") == b""


def test_an_event_that_cannot_be_read_is_skipped_and_counted():
    stream = to_chat().stream()
    out = stream.feed(chunk({"content": "a"}) + b"data: <html>oops</html>\n\n")
    out += stream.feed(b'data: {"choices": [{"index": 0, "delta": "x"}]}\n\n')
    out += stream.feed(chunk({"content": "b"}, "stop") + USAGE + DONE)
    assert stream.error is None and stream.skipped == 2 and stream.complete
    final, _ = sdk.replay_responses_stream(out)
    assert final is not None and final.output_text == "ab"

    chained = to_anthropic().stream()
    chained.feed(b"event: ping\ndata: {nope\n\n")
    assert chained.skipped == 1 and chained.error is None


@pytest.mark.parametrize("make", [to_chat, to_anthropic])
def test_a_clean_close_after_the_finish_reason_ends_the_stream_properly(make) -> None:
    stream = make().stream()
    if make is to_chat:
        out = stream.feed(chunk({"content": "ok"}) + chunk({}, "stop") + USAGE)
    else:
        out = stream.feed(
            b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
            b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}\n\n'
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
        )
    assert not stream.complete
    out += stream.finish()
    assert stream.complete
    final, _ = sdk.replay_responses_stream(out)
    assert final is not None and final.output_text == "ok"


def test_a_close_without_a_finish_reason_is_not_complete():
    stream = to_chat().stream()
    stream.feed(chunk({"content": "a"}))
    assert stream.finish() == b"" and not stream.complete


def test_a_cut_off_last_event_is_not_a_protocol_error():
    stream = to_chat().stream()
    stream.feed(chunk({"content": "a"}) + b'data: {"id":"chatcmpl-x","choi')
    assert stream.finish() == b""
    assert stream.error is None and not stream.complete


def test_anthropic_error_mid_stream_keeps_the_first_stages_verdict():
    stream = to_anthropic().stream()
    stream.feed(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    )
    out = stream.feed(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    assert isinstance(stream.error, UpstreamError) and stream.error.retryable
    assert [n for n, _ in events(out)] == ["response.failed"]
    assert stream.fail("x", "y") == b""


def test_anthropic_stream_finish_accepts_a_last_event_without_its_blank_line():
    stream = to_anthropic().stream()
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}'
    )
    out = stream.feed(body)
    assert not stream.complete
    out += stream.finish()
    assert stream.complete
    final, _ = sdk.replay_responses_stream(out)
    assert final is not None and final.output_text == "ok"


def test_responses_error_event_shapes():
    event = responses_error_event("rate_limit_error", "slow down", sequence_number=7)
    [(name, data)] = events(event)
    assert name == "error" and data["sequence_number"] == 7
    assert ResponseErrorEvent.model_validate(data).code == "rate_limit_error"
    assert data["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": None,
    }


# --- the passthrough stream ----------------------------------------------------------------

NATIVE = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":'
    b'{"id":"resp_n1","object":"response","created_at":1,"status":"in_progress","model":"gpt-4o",'
    b'"output":[],"parallel_tool_calls":true,"tool_choice":"auto","tools":[]}}\n\n'
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":1,'
    b'"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}\n\n'
    b'event: response.content_part.added\ndata: {"type":"response.content_part.added","sequence_number":2,'
    b'"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":""}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":3,'
    b'"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hi","logprobs":[]}\n\n'
)


def test_passthrough_relays_bytes_and_ends_a_broken_stream_with_response_failed():
    stream = ResponsesPassthroughStream()
    relayed = b"".join(stream.feed(NATIVE[i : i + 300]) for i in range(0, len(NATIVE), 300))
    assert relayed == NATIVE
    tail = stream.fail("upstream_timeout", "no data")
    [(name, data)] = events(tail)
    assert name == "response.failed" and data["sequence_number"] == 4
    assert data["response"]["id"] == "resp_n1" and data["response"]["status"] == "failed"
    # The SDK's stream state accepts it: same response id, next sequence number.
    final, ended = sdk.replay_responses_stream(NATIVE + tail)
    assert final is None and isinstance(ended, ResponseFailedEvent)
    assert stream.fail("x", "y") == b""


def test_passthrough_before_response_created_ends_with_an_error_event():
    stream = ResponsesPassthroughStream()
    [(name, data)] = events(stream.fail("upstream_timeout", "no data"))
    assert name == "error" and data["sequence_number"] == 0


# --- the watch -----------------------------------------------------------------------------


def test_watch_responses_lifecycle_is_not_content_and_completed_is_the_end():
    watch = StreamWatch(Api.RESPONSES)
    head, _, rest = NATIVE.partition(b"event: response.output_text.delta")
    assert watch.feed(head) == (head, False) and not watch.started
    _, content = watch.feed(b"event: response.output_text.delta" + rest)
    assert content and watch.started and not watch.complete
    watch.feed(b"data: [DONE]\n\n")
    assert not watch.complete  # not a Responses terminator
    watch.feed(b'event: response.completed\ndata: {"type":"response.completed","response":{}}\n\n')
    assert watch.complete and watch.error is None


@pytest.mark.parametrize(
    ("event", "content"),
    [
        (b'data: {"type":"response.output_item.added","item":{"type":"function_call"}}', True),
        (b'data: {"type":"response.output_item.added","item":{"type":"web_search_call"}}', True),
        (b'data: {"type":"response.output_item.added","item":{"type":"reasoning"}}', False),
        (b'data: {"type":"response.function_call_arguments.delta","delta":"{"}', True),
        (b'data: {"type":"response.reasoning_summary_text.delta","delta":"hm"}', True),
        (b'data: {"type":"response.output_text.delta","delta":""}', False),
        (b'data: {"type":"response.output_item.done","item":{"type":"message"}}', True),
        (b'data: {"type":"response.in_progress","response":{}}', False),
        (b'data: {"type":"response.queued","response":{}}', False),
    ],
)
def test_watch_responses_content_events(event: bytes, content: bool) -> None:
    watch = StreamWatch(Api.RESPONSES)
    assert watch.feed(event + b"\n\n") == (event + b"\n\n", content)


def test_watch_responses_incomplete_is_an_end_failed_and_error_are_errors():
    incomplete = StreamWatch(Api.RESPONSES)
    incomplete.feed(b'data: {"type":"response.incomplete","response":{}}\n\n')
    assert incomplete.complete and incomplete.error is None

    failed = StreamWatch(Api.RESPONSES)
    out, _ = failed.feed(
        b'data: {"type":"response.failed","response":{"error":{"code":"server_error","message":"x"}}}\n\n'
    )
    assert out and failed.error == "server_error" and not failed.started

    error = StreamWatch(Api.RESPONSES)
    error.feed(
        b'event: error\ndata: {"type":"error","sequence_number":2,"error":{"type":"too_many_requests","code":"rate_limit_exceeded","message":"x"}}\n\n'
    )
    assert error.error == "rate_limit_exceeded"
    flat = StreamWatch(Api.RESPONSES)
    flat.feed(b'data: {"type":"error","code":"server_error","message":"x","sequence_number":1}\n\n')
    assert flat.error == "server_error"

    broken = StreamWatch(Api.RESPONSES)
    broken.feed(b"event: response.created\ndata: {nope\n\n")
    assert broken.error == MALFORMED
    odd = StreamWatch(Api.RESPONSES)
    odd.feed(b'data: {"type":"response.output_item.added","item":"x"}\n\n')
    assert odd.error == MALFORMED


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_watch_responses_any_chunking(data: st.DataObject) -> None:
    body = NATIVE + b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    watch = StreamWatch(Api.RESPONSES)
    steps = [watch.feed(c) for c in chunks]
    assert b"".join(out for out, _ in steps) == body
    assert watch.complete and watch.started
    first = next(i for i, (_, content) in enumerate(steps) if content)
    released = b"".join(out for out, _ in steps[: first + 1])
    assert b"output_text.delta" in released
    assert b"output_text.delta" not in b"".join(out for out, _ in steps[:first])


def test_watch_takes_an_api_or_a_dialect():
    assert StreamWatch(Api.CHAT)._classify is StreamWatch(ApiFormat.OPENAI)._classify
    assert StreamWatch(Api.MESSAGES)._classify is StreamWatch(ApiFormat.ANTHROPIC)._classify


# --- a property over random chat streams ---------------------------------------------------

_piece = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)
_step = st.one_of(
    st.tuples(st.just("content"), _piece),
    st.tuples(st.just("reasoning_content"), _piece),
    st.tuples(st.just("refusal"), _piece),
    st.tuples(st.just("call"), st.integers(0, 2)),
    st.tuples(st.just("args"), st.integers(0, 2)),
)


def _chat_stream(steps: list[tuple[str, Any]], finish: str) -> tuple[bytes, dict]:
    """A chat stream from ``steps``, and what the client must end up with."""
    body = [chunk({"role": "assistant", "content": ""})]
    texts: dict[str, str] = {"content": "", "reasoning_content": "", "refusal": ""}
    calls: dict[int, str] = {}
    for kind, value in steps:
        if kind == "call" and value not in calls:
            calls[value] = ""
            body.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": value,
                                "id": f"call_{value}",
                                "type": "function",
                                "function": {"name": f"f{value}", "arguments": ""},
                            }
                        ]
                    }
                )
            )
        elif kind == "args" and value in calls:
            piece = f'"{value}",' if calls[value] else f'{{"k{value}":['
            calls[value] += piece
            body.append(chunk({"tool_calls": [{"index": value, "function": {"arguments": piece}}]}))
        elif kind in texts:
            texts[kind] += value
            body.append(chunk({kind: value}))
    for i, a in calls.items():
        if a:  # close the JSON object the pieces opened
            body.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": "0]}"}}]}))
    body += [chunk({}, finish), USAGE, DONE]
    args = {i: a + "0]}" if a else "{}" for i, a in calls.items()}
    return b"".join(body), {"texts": texts, "args": args}


@settings(max_examples=120, deadline=None)
@given(
    steps=st.lists(_step, max_size=25),
    finish=st.sampled_from(["stop", "tool_calls", "length"]),
    cuts=st.lists(st.floats(0, 1), max_size=8),
)
def test_any_chat_stream_reaches_the_sdk_whole(steps, finish, cuts) -> None:
    body, expected = _chat_stream(steps, finish)
    points = sorted({int(c * len(body)) for c in cuts})
    chunks = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    stream = to_chat().stream()
    outs = [stream.feed(c) for c in chunks] + [stream.finish()]
    assert stream.complete and stream.error is None
    for out in outs:
        assert not out or out.endswith(b"\n\n")
    out = b"".join(outs)
    final, ended = sdk.replay_responses_stream(out)
    if finish == "length":
        assert final is None and ended.type == "response.incomplete"
        response = ended.response
    else:
        assert final is not None
        response = final
    text = refusal = reasoning = ""
    args: dict[int, str] = {}
    for item in response.output:
        if item.type == "message":
            for part in item.content:
                if part.type == "output_text":
                    text += part.text
                else:
                    refusal += part.refusal
        elif item.type == "reasoning":
            reasoning += "".join(c.text for c in item.content or ())
        elif item.type == "function_call":
            args[int(item.call_id.removeprefix("call_"))] = item.arguments
            assert isinstance(json.loads(item.arguments), dict)
    assert text == expected["texts"]["content"]
    assert refusal == expected["texts"]["refusal"]
    assert reasoning == expected["texts"]["reasoning_content"]
    assert args == expected["args"]
    assert response.usage is not None and response.usage.total_tokens == 5
    indices = [json.loads(d)["sequence_number"] for n, d in sdk_raw(out)]
    assert indices == list(range(len(indices)))


def sdk_raw(body: bytes) -> list[tuple[str | None, str]]:
    from trio_gateway.providers.sse import SSEDecoder

    decoder = SSEDecoder()
    return [(e.event, e.data) for e in decoder.feed(body) + decoder.flush()]


def test_assistant_messages_and_calls_group_into_turns():
    body = {
        **REQUEST,
        "input": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "first"},
            {"role": "assistant", "content": "second"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"role": "assistant", "content": " and more"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
        ],
    }
    messages = to_chat(body=body).request(body)["messages"]
    assert [(m["role"], m.get("content")) for m in messages] == [
        ("user", "a"),
        ("assistant", "first"),
        ("assistant", "second and more"),  # the calls' turn, text after them included
        ("tool", "1"),
    ]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1"]


def test_an_assistant_message_while_calls_wait_for_outputs_is_refused():
    body = {
        **REQUEST,
        "input": [
            {"role": "user", "content": "a"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"role": "assistant", "content": "hm"},
            {"type": "function_call_output", "call_id": "c2", "output": "2"},
        ],
    }
    t = translator("responses", "openai-compatible")
    assert t is not None
    with pytest.raises(TranslationError, match=r"input\[4\]: function calls \['c2'\]"):
        t.request(body)
