"""The SSE decoder against the WHATWG event-stream rules, at any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder as OpenAISDKDecoder

from trio_gateway.providers.sse import SSEDecoder, SSEEvent, encode_event


def decode(data: bytes, *, comments: bool = False) -> list[SSEEvent]:
    d = SSEDecoder(comments=comments)
    return d.feed(data) + d.flush()


def decode_bytewise(data: bytes, *, comments: bool = False) -> list[SSEEvent]:
    d = SSEDecoder(comments=comments)
    out: list[SSEEvent] = []
    for i in range(len(data)):
        out += d.feed(data[i : i + 1])
    return out + d.flush()


def test_simple_events() -> None:
    data = b'data: {"a":1}\n\nevent: ping\ndata: {}\n\n'
    assert decode(data) == [SSEEvent(None, '{"a":1}'), SSEEvent("ping", "{}")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_endings(newline: bytes) -> None:
    data = b"event: a\ndata: 1\ndata: 2\n\ndata: 3\n\n".replace(b"\n", newline)
    expected = [SSEEvent("a", "1\n2"), SSEEvent(None, "3")]
    assert decode(data) == expected
    assert decode_bytewise(data) == expected


def test_mixed_line_endings() -> None:
    data = b"data: a\r\n\ndata: b\r\r\ndata: c\n\r\n"
    assert [e.data for e in decode_bytewise(data)] == ["a", "b", "c"]


def test_crlf_split_between_cr_and_lf() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: x\r") == []
    assert d.feed(b"\n\r") == [SSEEvent(None, "x")]
    assert d.feed(b"\ndata: y\r\n\r\n") == [SSEEvent(None, "y")]


def test_comments_are_ignored_or_reported() -> None:
    data = b": keep-alive\n\n: note\ndata: x\n\n"
    assert decode(data) == [SSEEvent(None, "x")]
    assert decode(data, comments=True) == [
        SSEEvent(None, "", comment="keep-alive"),
        SSEEvent(None, "x", comment="note"),
    ]


def test_field_parsing_rules() -> None:
    data = (
        b"data\n"  # no colon: the field with an empty value
        b"data:no-space\n"
        b"data:  two spaces\n"  # only one leading space is removed
        b"unknown: ignored\n"
        b"event:\n"  # an empty type is the default type
        b"\n"
    )
    assert decode(data) == [SSEEvent(None, "\nno-space\n two spaces")]


def test_block_without_data_is_not_dispatched() -> None:
    assert decode(b"event: x\n\nid: 5\n\nretry: 10\n\n\n\n\n") == []


def test_empty_data_is_dispatched() -> None:
    assert decode(b"data:\n\n") == [SSEEvent(None, "")]


def test_id_persists_and_nul_is_ignored() -> None:
    events = decode(b"id: 1\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "1"), ("d", "")]


def test_retry_only_digits() -> None:
    d = SSEDecoder()
    events = d.feed(b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\n")
    assert [(e.data, e.retry) for e in events] == [("a", 1500), ("b", None)]
    assert d.retry == 1500


def test_bom_stripped_once_even_when_split() -> None:
    d = SSEDecoder()
    assert d.feed(b"\xef") == []
    assert d.feed(b"\xbb") == []
    assert d.feed(b"\xbfdata: a\n\n\xef\xbb\xbfdata: b\n\n") == [SSEEvent(None, "a")]
    # The second BOM is part of a field name ("\ufeffdata"), which is unknown.


def test_partial_bom_then_other_bytes() -> None:
    assert decode(b"\xef") == []
    assert [e.data for e in decode_bytewise(b"\xefdata: a\n\n")] == []  # "\ufffddata" field
    assert [e.data for e in decode_bytewise(b"\xef\xbb\xbfdata: a\n\n")] == ["a"]


def test_utf8_split_across_chunks_and_invalid_bytes() -> None:
    data = "data: wörld ✓\n\n".encode()
    assert decode_bytewise(data) == [SSEEvent(None, "wörld ✓")]
    assert decode(b"data: \xff\n\n") == [SSEEvent(None, "\ufffd")]


def test_flush_dispatches_an_unterminated_last_event() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\n\ndata: [DONE]") == [SSEEvent(None, "a")]
    assert d.flush() == [SSEEvent(None, "[DONE]")]
    assert d.flush() == []


def test_many_events_in_one_chunk_and_one_event_in_many() -> None:
    many = b"".join(b"data: %d\n\n" % i for i in range(100))
    assert [e.data for e in decode(many)] == [str(i) for i in range(100)]
    big = b"data: " + b"x" * 100_000 + b"\n\n"
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for i in range(0, len(big), 1000):
        out += d.feed(big[i : i + 1000])
    assert out == [SSEEvent(None, "x" * 100_000)]


def test_encode_event() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'
    raw = encode_event("line1\r\nline2\rline3", event="e", id="7", retry=100, comment="hi")
    assert raw == b": hi\nevent: e\nid: 7\nretry: 100\ndata: line1\ndata: line2\ndata: line3\n\n"
    assert decode(raw) == [SSEEvent("e", "line1\nline2\nline3", "7", 100)]
    with pytest.raises(ValueError):
        encode_event("x", event="a\nb")


# --- properties ------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=20,
)
_event = st.tuples(
    st.one_of(st.none(), _text.filter(lambda s: s.strip() == s and s)),
    st.lists(_text, min_size=1, max_size=3).map("\n".join),
    st.one_of(st.none(), _text),
)


def _wire(events: list[tuple[str | None, str, str | None]], newline: bytes) -> bytes:
    raw = b"".join(encode_event(data, event=name, id=id) for name, data, id in events)
    return raw.replace(b"\n", newline)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(_event, max_size=6),
    newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_roundtrip_at_any_split(
    events: list[tuple[str | None, str, str | None]], newline: bytes, cuts: list[int]
) -> None:
    data = _wire(events, newline)
    points = sorted({c % (len(data) + 1) for c in cuts})
    d = SSEDecoder()
    got: list[SSEEvent] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        got += d.feed(data[a:b])
    got += d.flush()
    last_id = None
    expected = []
    for name, body, id in events:
        last_id = id if id is not None else last_id
        expected.append((name or None, body, last_id))
    assert [(e.event, e.data, e.id) for e in got] == expected


@settings(max_examples=200, deadline=None)
@given(
    blocks=st.lists(
        st.lists(
            # The SDK takes any int() for retry ("-0"); the spec, and we, only digits.
            st.tuples(st.sampled_from(["data", "event", "retry", ":", "x"]), _text).filter(
                lambda field: field[0] != "retry" or (field[1].isascii() and field[1].isdigit())
            ),
            max_size=4,
        ).map(lambda fields: [*fields, ("data", "d")]),
        max_size=5,
    ),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_agrees_with_the_openai_sdk_decoder(
    blocks: list[list[tuple[str, str]]], newline: str
) -> None:
    """The openai SDK's decoder as an oracle (for blocks that carry data)."""
    text = "".join(
        "".join(f"{name}:{value}{newline}" for name, value in block) + newline for block in blocks
    )
    data = text.encode()
    oracle = list(OpenAISDKDecoder().iter_bytes(iter([data])))
    ours = decode_bytewise(data)
    assert [(e.event, e.data, e.retry) for e in ours] == [
        (o.event, o.data, o.retry) for o in oracle
    ]
