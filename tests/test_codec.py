"""The job codec (`flowline.runtime.job`): orjson's speed, the standard library's answers.

Every value the standard library encodes must decode, from flowline's encoding, to what the
standard library's own encoding decodes to; every value it refuses flowline refuses (but enum
members and UUIDs, which both of flowline's paths write as orjson does). Every JSON text must
decode to what `json.loads` gives. Compared through the standard library's encoding of the
decoded values, which tells 1 from 1.0 and 0.0 from -0.0 (``==`` does not).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowline.errors import SerializationError
from flowline.runtime.job import dumps, encode, loads


def std(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (as the standard library writes them)."""
    return json.dumps(a, allow_nan=True) == json.dumps(b, allow_nan=True)


# Text with lone surrogates in it too, which orjson refuses and the standard library escapes.
text = st.text(
    st.characters(codec=None) | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits orjson refuses to encode and decodes as float
    | st.integers(min_value=2**62, max_value=2**65)
    | st.integers(min_value=-(2**65), max_value=-(2**62))
    | st.floats()  # NaN and the infinities included: the standard library refuses them
    | text
)
keys = text | st.integers() | st.floats() | st.booleans() | st.none()
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(keys, inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=2000, deadline=None)
@given(values)
def test_encoding_decodes_to_what_the_standard_library_gives(value: Any) -> None:
    try:
        expected = std(value)
    except (TypeError, ValueError):
        with pytest.raises((TypeError, ValueError)):
            encode(value)
        with pytest.raises(SerializationError, match="data is not JSON-serialisable"):
            dumps(value, what="data")
        return
    ours = encode(value)
    assert same(json.loads(ours), json.loads(expected))  # not the texts: keys may repeat
    assert same(loads(ours), json.loads(expected))


@settings(max_examples=2000, deadline=None)
@given(values, st.booleans(), st.sampled_from([None, 1, 2]), st.booleans())
def test_any_json_text_decodes_as_the_standard_library_decodes_it(
    value: Any, ascii_only: bool, indent: int | None, as_bytes: bool
) -> None:
    """JSON written by other tools too: spaced, indented, with escapes or raw UTF-8, NaN."""
    try:
        text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    except (TypeError, ValueError):
        return  # keys the standard library cannot write
    raw: str | bytes = text
    if as_bytes:
        try:
            raw = text.encode()
        except UnicodeEncodeError:
            return  # a lone surrogate written raw has no UTF-8 form
    assert same(loads(raw), json.loads(text))


@pytest.mark.parametrize(
    "raw",
    [
        b"123456789012345678901234567890",  # orjson alone would give 1.2345678901234568e+29
        b"-9223372036854775809",
        b'{"id":18446744073709551616}',
        b'{"a":1,"a":2}',  # the last wins, in both
        b'"\\ud800"',  # a lone surrogate, escaped
        b'"\\u00e9"',
        '"\u00e9"',
        b"1e400",  # the standard library: inf
        b"-0",
        b" [1, 2.50, {} ] ",
    ],
)
def test_texts_where_orjson_alone_would_differ(raw: bytes | str) -> None:
    expected = json.loads(raw)
    assert same(loads(raw), expected)


def test_nan_in_a_text_decodes_as_the_standard_library_decodes_it() -> None:
    assert math.isnan(loads(b"NaN"))
    assert loads(b"[Infinity]") == [math.inf]


def test_invalid_json_raises_the_standard_librarys_error() -> None:
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        loads(b"[1,]")
    with pytest.raises(UnicodeDecodeError):
        loads(b'"\xff"')


class Colour(enum.Enum):
    RED = "red"
    ONE = 1


@pytest.mark.parametrize("others", [{}, {"none": None}, {"none": None, "pair": (1, 2)}])
def test_enums_and_uuids_are_written_as_their_values_on_both_paths(others: dict[str, Any]) -> None:
    """A null in the payload takes the other path: it must write the same values."""
    value = {"c": Colour.RED, "n": Colour.ONE, "u": uuid.UUID(int=7), **others}
    assert json.loads(encode(value)) == {
        "c": "red",
        "n": 1,
        "u": "00000000-0000-0000-0000-000000000007",
        **json.loads(std(others)),
    }


@dataclasses.dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        Point(1),
        datetime.datetime(2026, 12, 2),
        datetime.date(2026, 12, 2),
        b"bytes",
        {1, 2},
        object(),
        {"nested": [float("nan")]},
        {"inf": float("inf"), "none": None},
    ],
    ids=repr,
)
def test_what_the_standard_library_refuses_is_a_serialisation_error(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"^result is not JSON-serialisable: "):
        dumps(value, what="result")
