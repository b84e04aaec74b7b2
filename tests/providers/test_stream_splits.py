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
