"""StreamWatch: whole events out, and what they mean, whatever the chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.providers.formats import ApiFormat
from trio_gateway.providers.passthrough import PassthroughStream
from trio_gateway.providers.watch import MALFORMED, StreamWatch

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"
OPENAI = ROLE + b": keep-alive\n\n" + TOKEN + FINISH + DONE

ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","content":[]}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def run(fmt, chunks):
    watch = StreamWatch(fmt)
    steps = [watch.feed(c) for c in chunks]
    steps.append(watch.flush())
    return watch, steps


def test_openai_metadata_is_not_content_and_done_completes():
    watch = StreamWatch(ApiFormat.OPENAI)
    assert watch.feed(ROLE + b": keep-alive\n\n") == (ROLE + b": keep-alive\n\n", False)
    assert not watch.started
    assert watch.feed(TOKEN) == (TOKEN, True) and watch.started
    watch.feed(FINISH + DONE)
    assert watch.complete and watch.error is None


def test_anthropic_first_content_is_the_first_delta():
    watch = StreamWatch(ApiFormat.ANTHROPIC)
    head, _, rest = ANTHROPIC.partition(b"event: content_block_delta")
    assert watch.feed(head) == (head, False)
    _, content = watch.feed(b"event: content_block_delta" + rest)
    assert content and watch.started and watch.complete


def test_tool_use_block_start_is_content():
    block = b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}\n\n'
    assert StreamWatch(ApiFormat.ANTHROPIC).feed(block) == (block, True)


def test_terminators_without_the_optional_space():
    openai = StreamWatch(ApiFormat.OPENAI)
    openai.feed(TOKEN + b"data:[DONE]\n\n")
    assert openai.complete
    anthropic = StreamWatch(ApiFormat.ANTHROPIC)
    anthropic.feed(b'event:message_stop\ndata:{"type":"message_stop"}\r\n\r\n')
    assert anthropic.complete


def test_content_mentioning_the_terminator_does_not_complete():
    tricky = (
        b'data: {"choices":[{"delta":{"content":"\\ndata: [DONE]\\nevent: message_stop"}}]}\n\n'
    )
    watch = StreamWatch(ApiFormat.OPENAI)
    watch.feed(tricky)
    assert watch.started and not watch.complete


def test_error_events_in_both_dialects():
    openai = StreamWatch(ApiFormat.OPENAI)
    error = b'data: {"error":{"message":"x","type":"server_error"}}\n\n'
    assert openai.feed(error) == (error, True)
    assert openai.error == "server_error" and not openai.started
    anthropic = StreamWatch(ApiFormat.ANTHROPIC)
    anthropic.feed(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"x"}}\n\n'
    )
    assert anthropic.error == "overloaded_error"
    assert anthropic.feed(ANTHROPIC) == (b"", False)  # nothing after an error


def test_a_malformed_first_event_is_held_back_with_everything_after_it():
    watch = StreamWatch(ApiFormat.OPENAI)
    out, content = watch.feed(b"data: {not json\n\n" + TOKEN + FINISH + DONE)
    assert (out, content) == (b"", False)
    assert watch.error == MALFORMED and not watch.complete and not watch.started


def test_a_malformed_event_after_content_is_passed_on_and_counted():
    watch = StreamWatch(ApiFormat.OPENAI)
    bad = b"data: {not json\n\n"
    out, _ = watch.feed(TOKEN + bad + FINISH + DONE)
    assert out == TOKEN + bad + FINISH + DONE  # as the provider sent it
    assert watch.error is None and watch.complete and watch.malformed == 1


def test_a_finish_reason_makes_the_answer_whole():
    watch = StreamWatch(ApiFormat.OPENAI)
    watch.feed(TOKEN)
    assert not watch.finished
    watch.feed(FINISH)
    assert watch.finished and not watch.complete
    anthropic = StreamWatch(ApiFormat.ANTHROPIC)
    anthropic.feed(
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":null}}\n\n'
    )
    assert not anthropic.finished
    anthropic.feed(
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n'
    )
    assert anthropic.finished and not anthropic.complete


def test_a_last_event_without_its_blank_line():
    watch = StreamWatch(ApiFormat.OPENAI)
    watch.feed(TOKEN + b"data: [DONE]")
    assert not watch.complete
    assert watch.flush() == (b"data: [DONE]\n\n", True)
    assert watch.complete


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(ApiFormat.OPENAI, OPENAI), (ApiFormat.ANTHROPIC, ANTHROPIC)]), st.data())
def test_any_chunking_releases_the_same_bytes_and_verdicts(case, data):
    fmt, body = case
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    watch, steps = run(fmt, chunks)
    assert b"".join(out for out, _ in steps) == body
    assert watch.complete and watch.started and watch.error is None
    for out, _ in steps:
        assert not out or out.endswith((b"\n\n", b"\r\n\r\n"))


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_line_endings_and_splits_give_the_same_events_and_flags(eol, data):
    body = ANTHROPIC.replace(b"\n", eol)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(body) - 1), max_size=10)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    watch, steps = run(ApiFormat.ANTHROPIC, chunks)
    assert b"".join(out for out, _ in steps) == body
    assert watch.complete and watch.started
    # The content flag goes with the bytes that carry the first delta, however cut.
    first = next(i for i, (out, content) in enumerate(steps) if content)
    released = b"".join(out for out, _ in steps[: first + 1])
    assert b"content_block_delta" in released
    assert b"content_block_delta" not in b"".join(out for out, _ in steps[:first])


def test_a_blank_line_made_of_lf_then_crlf():
    watch = StreamWatch(ApiFormat.OPENAI)
    assert watch.feed(TOKEN.rstrip(b"\n") + b"\n\r\n") == (TOKEN.rstrip(b"\n") + b"\n\r\n", True)


def test_a_cr_at_the_end_of_a_chunk_waits_for_what_follows():
    watch = StreamWatch(ApiFormat.OPENAI)
    event = TOKEN.rstrip(b"\n")
    assert watch.feed(event + b"\r") == (b"", False)  # CR, then maybe LF: not yet an event
    assert watch.feed(b"\n\r\n") == (event + b"\r\n\r\n", True)


@pytest.mark.parametrize(
    ("fmt", "event"),
    [
        (ApiFormat.OPENAI, b'data: {"choices": 5}\n\n'),
        (ApiFormat.OPENAI, b'data: {"choices": [{"delta": "x"}]}\n\n'),
        (ApiFormat.OPENAI, b'data: {"error": "down"}\n\n'),
        (ApiFormat.ANTHROPIC, b'data: {"type": []}\n\n'),
        (ApiFormat.ANTHROPIC, b'event: content_block_start\ndata: {"content_block": "x"}\n\n'),
    ],
)
def test_valid_json_of_the_wrong_shape_never_crashes(fmt, event):
    watch = StreamWatch(fmt)
    watch.feed(event)
    assert watch.error is not None  # malformed, or (a bare error string) an error event


def test_nothing_is_released_after_the_terminator():
    watch = StreamWatch(ApiFormat.OPENAI)
    out, _ = watch.feed(TOKEN + DONE + b'data: {"error": {"type": "late"}}\n\n')
    assert out == TOKEN + DONE and watch.complete and watch.error is None
    assert watch.feed(TOKEN) == (b"", False)


def test_an_event_without_end_is_cut_off():
    from trio_gateway.providers.watch import MAX_EVENT

    watch = StreamWatch(ApiFormat.OPENAI)
    watch.feed(b"data: " + b"x" * (MAX_EVENT + 1))
    assert watch.error == MALFORMED


def test_a_passthrough_stream_gets_its_missing_terminator_once():
    """The finish reason in a last event without its blank line, then the close: the
    relay finishes the stream when it commits and again at its end; one terminator."""
    watch = StreamWatch(ApiFormat.OPENAI)
    stream = PassthroughStream(ApiFormat.OPENAI, watch)
    watch.feed(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}')
    assert watch.flush()[1] and watch.finished and not watch.complete
    assert stream.finish() == b"data: [DONE]\n\n"
    assert stream.finish() == b""
