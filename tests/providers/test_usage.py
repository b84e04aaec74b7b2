"""Token usage as each dialect reports it, whole and streamed; usage the client did not ask for."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.providers.formats import Api, ApiFormat
from trio_gateway.providers.usage import Usage, tokens, usage_of
from trio_gateway.providers.watch import StreamWatch


def test_tokens_in_each_dialect():
    openai = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert tokens(openai) == (12, 5, None)
    assert tokens({"input_tokens": 10, "output_tokens": 3}) == (10, 3, None)
    # Anthropic's cache reads and writes are input too; the reads are the cached tokens.
    anthropic = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 3,
    }
    assert tokens(anthropic) == (1110, 3, 1000)
    assert tokens(None) == (None, None, None) == tokens({"prompt_tokens": "12"})
    assert tokens({"output_tokens": 7}) == (None, 7, None)
    # OpenAI's cached prompt tokens are part of prompt_tokens (chat, and the Responses API).
    cached = {"prompt_tokens": 2006, "completion_tokens": 300}
    cached["prompt_tokens_details"] = {"cached_tokens": 1920, "audio_tokens": 0}
    assert tokens(cached) == (2006, 300, 1920)
    responses = {"input_tokens": 900, "output_tokens": 20}
    responses["input_tokens_details"] = {"cached_tokens": 512}
    assert tokens(responses) == (900, 20, 512)
    # Embeddings: the prompt only.
    assert tokens({"prompt_tokens": 8, "total_tokens": 8}) == (8, None, None)


def test_usage_adds_up_over_the_attempts_of_a_request():
    first, second = Usage(40, None, "a"), Usage(900, 300, "b", 128)
    assert first + second == Usage(940, 300, "b", 128)
    assert (first + second).total == 1240
    assert Usage() + Usage(model="m") == Usage(model="m") and not Usage(model="m").reported
    assert Usage(None, 0).reported


def test_usage_of_whole_answers():
    assert usage_of(
        {"model": "gpt-4o-mini-2024", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    ) == Usage(1, 2, "gpt-4o-mini-2024")
    assert usage_of({"type": "message", "usage": {"input_tokens": 4, "output_tokens": 5}}) == Usage(
        4, 5
    )
    assert usage_of({"object": "response", "usage": {"input_tokens": 4}}) == Usage(4, None)
    assert usage_of([]) is None and usage_of({"choices": []}) is None


def events(*chunks: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


CHUNK = {"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
FINISH = {
    "id": "c1",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
}
USAGE = {
    "id": "c1",
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2},
}


def with_null(chunk: dict) -> dict:
    return {**chunk, "usage": None}


def test_openai_stream_usage_is_read_and_kept_from_a_client_that_did_not_ask():
    body = events(with_null(CHUNK), with_null(FINISH), USAGE) + b"data: [DONE]\n\n"
    watch = StreamWatch(ApiFormat.OPENAI, hide_usage=True)
    out, _ = watch.feed(body)
    assert out == events(CHUNK, FINISH) + b"data: [DONE]\n\n"  # as without include_usage
    assert watch.usage() == Usage(9, 2, "gpt-4o-mini") and watch.complete

    shown = StreamWatch(ApiFormat.OPENAI)
    out, _ = shown.feed(body)
    assert out == body  # the client asked: everything, as the provider sent it
    assert shown.usage() == Usage(9, 2, "gpt-4o-mini")


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_hidden_usage_whatever_the_chunking(cuts):
    body = (
        events(with_null(CHUNK), with_null(CHUNK), with_null(FINISH), USAGE) + b"data: [DONE]\n\n"
    )
    watch = StreamWatch(Api.CHAT, hide_usage=True)
    out, at = b"", 0
    for cut in cuts:
        out += watch.feed(body[at : at + cut])[0]
        at += cut
    out += watch.feed(body[at:])[0] + watch.flush()[0]
    assert out == events(CHUNK, CHUNK, FINISH) + b"data: [DONE]\n\n"


def test_usage_null_is_removed_only_where_it_is_a_member():
    tricky = {
        "usage": None,
        "id": "c1",
        "choices": [{"index": 0, "delta": {"content": 'say "usage": null, please'}}],
    }
    watch = StreamWatch(ApiFormat.OPENAI, hide_usage=True)
    out, _ = watch.feed(events(tricky))
    assert json.loads(out[6:]) == {k: v for k, v in tricky.items() if k != "usage"}


def test_anthropic_stream_usage():
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x",'
        b'"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":15}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    watch = StreamWatch(ApiFormat.ANTHROPIC, hide_usage=True)  # no effect on Messages
    out, _ = watch.feed(body)
    assert out == body
    assert watch.usage() == Usage(30, 15, "claude-x", cached_tokens=5)


def test_responses_stream_usage():
    done = {
        "type": "response.completed",
        "response": {
            "model": "gpt-4o",
            "usage": {
                "input_tokens": 3,
                "output_tokens": 4,
                "input_tokens_details": {"cached_tokens": 2},
            },
        },
    }
    watch = StreamWatch(Api.RESPONSES)
    watch.feed(b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n")
    assert watch.usage() == Usage(3, 4, "gpt-4o", 2)
