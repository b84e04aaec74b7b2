"""JSON on the request path: what it reads it can always write back, and bad input is a JSONError."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_gateway import jsonio

TEXT = st.text(st.characters(exclude_categories=()))  # lone surrogates included
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**80), max_value=10**80)  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return float(a) == float(b)  # orjson reads integers beyond 64 bits as floats
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@given(VALUES)
def test_what_is_written_is_valid_utf8_json_that_reads_back_the_same(value):
    data = jsonio.dumpb(value)
    data.decode("utf-8")  # never a lone surrogate in the bytes: its escape instead
    assert same(jsonio.loads(data), value)
    assert same(json.loads(data), value)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_a_json_error(data):
    with contextlib.suppress(jsonio.JSONError):
        jsonio.loads(data)


@pytest.mark.parametrize("depth", [254, 256, 1000, 1024])
def test_anything_read_can_be_written_back_however_deep(depth):
    data = ("[" * depth + '{"a": "\\ud800"}' + "]" * depth).encode()
    if depth >= 1000:
        data = ("[" * depth + "]" * depth).encode()  # a surrogate takes the slower reader
    value = jsonio.loads(data)
    assert jsonio.dumpb(value).replace(b" ", b"") == data.replace(b" ", b"")


def test_refusals_say_why():
    cases = {
        b"[" * 1025 + b"]" * 1025: "nested more than 1024 levels deep",
        b"[NaN]": "NaN is not a JSON value",
        b"[-Infinity]": "-Infinity is not a JSON value",
        b"[1e400]": "number 1e400 is out of range",
        b"[" + b"1" * 4301 + b"]": "integer of 4301 digits: at most 4300 are accepted",
        '{"a": 1}'.encode("utf-16-le"): "not UTF-8 text",
        b'{"a": 1} {"b": 2}': "Extra data at line 1 column 10",
    }
    for data, message in cases.items():
        with pytest.raises(jsonio.JSONError) as info:
            jsonio.loads(data)
        assert str(info.value).startswith(message), (data[:20], str(info.value))
