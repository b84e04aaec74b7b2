"""Every golden stream, fed at every chunk boundary, gives the same client bytes.

A provider's bytes arrive cut anywhere: inside a JSON string, inside a multi-byte
UTF-8 character, between the CR and LF of a line end. Whatever the cut, the
stream translator must emit exactly the bytes it emits for the whole stream, and
only whole events per ``feed`` call (so that an error event appended after any
call starts on an event boundary).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.providers import golden, sdk
from trio_gateway.providers.formats import ApiFormat
from trio_gateway.providers.watch import StreamWatch

STREAMS = [p for p in golden.paths() if "provider_stream" in golden.load(p)]


@functools.cache
def _case(path: Path) -> dict[str, Any]:
    return golden.load(path)


def _translate(path: Path, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    case = _case(path)
    t = golden.make_translator(path, case)
    t.request(case["client_request"])
    stream = t.stream()
    outputs = [stream.feed(chunk) for chunk in chunks]
    outputs.append(stream.finish())
    return outputs, stream.complete


def _source(path: Path) -> bytes:
    return golden.stream_bytes(_case(path)["provider_stream"])


def _check(path: Path, chunks: list[bytes], whole: bytes, complete: bool) -> None:
    outputs, done = _translate(path, chunks)
    assert b"".join(outputs) == whole
    assert done == complete
    for out in outputs:
        assert not out or out.endswith(b"\n\n"), out[-40:]


@pytest.mark.parametrize("path", STREAMS, ids=golden.case_id)
def test_every_split_point(path: Path) -> None:
    data = _source(path)
    outputs, complete = _translate(path, [data])
    whole = b"".join(outputs)
    assert whole, "the golden stream produced nothing"
    for i in range(len(data) + 1):
        _check(path, [data[:i], data[i:]], whole, complete)


@pytest.mark.parametrize("path", STREAMS, ids=golden.case_id)
def test_one_byte_at_a_time(path: Path) -> None:
    data = _source(path)
    outputs, complete = _translate(path, [data])
    whole = b"".join(outputs)
    _check(path, [data[i : i + 1] for i in range(len(data))], whole, complete)


@pytest.mark.parametrize("path", STREAMS, ids=golden.case_id)
@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_other_line_endings(path: Path, newline: bytes) -> None:
    data = _source(path)
    outputs, complete = _translate(path, [data])
    other = data.replace(b"\n", newline)
    _check(path, [other], b"".join(outputs), complete)
    _check(path, [other[i : i + 1] for i in range(len(other))], b"".join(outputs), complete)


@pytest.mark.parametrize("path", STREAMS, ids=golden.case_id)
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=12), crlf=st.booleans())
def test_random_splits(path: Path, cuts: list[float], crlf: bool) -> None:
    data = _source(path)
    outputs, complete = _translate(path, [data])
    whole = b"".join(outputs)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    points = sorted({int(c * len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    _check(path, chunks, whole, complete)


@pytest.mark.parametrize("path", STREAMS, ids=golden.case_id)
def test_each_output_piece_parses_alone(path: Path) -> None:
    """Pieces of a split stream are independently well-formed SSE."""
    data = _source(path)
    outputs, _ = _translate(path, [data[i : i + 7] for i in range(0, len(data), 7)])
    pieces = [e for out in outputs for e in sdk.events(out)]
    assert pieces == sdk.events(b"".join(outputs))


# --- behind the stream watch: parsed events (each event parsed once) -------------------------

#: Golden streams whose translator takes the watch's parsed events, and their provider's dialect.
EVENT_STREAMS = [
    p for p in STREAMS if hasattr(golden.make_translator(p, _case(p)).stream(), "feed_events")
]
#: What a provider may put between two events: keep-alives, an event without data, empty data,
#: data that is not JSON, JSON that is not an object, an event missing what its type needs.
EXTRAS = [
    b": keep-alive\n\n",
    b": keep-alive\ndata:\n\n",
    b"event: ping\n\n",
    b"data:\n\n",
    b"data: {not json\n\n",
    b"data: [1, 2]\n\n",
    b'data: {"choices":[{"index":0,"delta":{"content":5}}]}\n\n',
    b"data: {\xff}\n\n",
]
#: And per dialect: events that a translator reads, typed by their ``event`` line only.
DIALECT_EXTRAS = {
    ApiFormat.ANTHROPIC: [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0}\n\n',
        b'event: content_block_delta\ndata: {"index":0,"delta":{"type":"text_delta","text":"!"}}\n\n',
        b'data: {"type":"ping"}\n\n',
    ],
    ApiFormat.OPENAI: [
        b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\n',
        b'data: {"choices":[{"index":1,"delta":{"content":"?"}}]}\n\n',
    ],
}


def _provider(path: Path) -> ApiFormat:
    return ApiFormat.OPENAI if golden.client_format(path) == "anthropic" else ApiFormat.ANTHROPIC


def _behind_watch(path: Path, chunks: list[bytes], parsed: bool) -> tuple[bytes, int, int, bool]:
    """The client's bytes (and skipped, malformed, complete) as the target actor relays them."""
    case = _case(path)
    translator = golden.make_translator(path, case)
    translator.request(case["client_request"])
    stream: Any = translator.stream()
    watch = StreamWatch(_provider(path), events=parsed)
    out = []
    for chunk in [*chunks, None]:
        released, _ = watch.flush() if chunk is None else watch.feed(chunk)
        if not released:
            continue
        if parsed:
            out.append(stream.feed_events(watch.events))
            watch.events.clear()  # type: ignore[union-attr]
        else:
            out.append(stream.feed(released))
    out.append(stream.finish())
    return b"".join(out), stream.skipped, watch.malformed, stream.complete


def test_both_chat_and_messages_golden_streams_can_be_fed_as_parsed_events() -> None:
    providers = [_provider(p) for p in EVENT_STREAMS]
    assert providers.count(ApiFormat.OPENAI) >= 5 and providers.count(ApiFormat.ANTHROPIC) >= 5


@pytest.mark.parametrize("path", EVENT_STREAMS, ids=golden.case_id)
@settings(max_examples=40, deadline=None)
@given(data=st.data(), cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=8))
def test_parsed_events_give_the_bytes_the_translator_gives_for_the_raw_stream(
    path: Path, data: st.DataObject, cuts: list[float]
) -> None:
    """Whatever the provider sends and however it is cut, a translator fed the watch's
    parsed events gives the client exactly what it gives when fed the watch's bytes."""
    extra = st.sampled_from(EXTRAS + DIALECT_EXTRAS[_provider(path)])
    extras = data.draw(st.lists(st.tuples(st.floats(0, 1), extra), max_size=4))
    events = [e + b"\n\n" for e in _source(path).split(b"\n\n") if e]
    for where, event in extras:
        events.insert(int(where * len(events)), event)
    source = b"".join(events)
    if data.draw(st.booleans()):
        source = source.replace(b"\n", b"\r\n")
    points = sorted({int(c * len(source)) for c in cuts})
    chunks = [source[a:b] for a, b in zip([0, *points], [*points, len(source)], strict=True)]
    assert _behind_watch(path, chunks, parsed=True) == _behind_watch(path, chunks, parsed=False)
