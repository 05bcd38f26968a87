"""models.jsonio gives the standard library's values, through orjson where that is the same."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models import jsonio

# JSON values as our rows hold them: any int (beyond 64 bits too), finite floats, any text without lone surrogates
EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**19, -(10**19)]
scalars = st.none() | st.booleans() | st.integers() | st.sampled_from(EDGES) \
    | st.floats(allow_nan=False, allow_infinity=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                      max_leaves=30)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True for ==)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@given(values)
def test_values_come_back_as_json_gives_them_whatever_wrote_them(value: Any) -> None:
    expected = json.loads(json.dumps(value))
    assert same(jsonio.loads(jsonio.dumps(value)), expected)
    assert same(jsonio.loads(jsonio.dumps_bytes(value)), expected)
    # rows written before, by json.dumps (spaces, \u escapes), and a driver's memoryview
    assert same(jsonio.loads(json.dumps(value)), expected)
    assert same(jsonio.loads(memoryview(json.dumps(value).encode())), expected)


def test_numbers_beyond_64_bits_stay_ints() -> None:
    for edge in EDGES:
        assert same(jsonio.loads(str(edge)), edge)
    big = 2**70 + 1
    assert same(jsonio.loads(f'{{"id": {big}}}'), {"id": big})
    assert same(jsonio.loads(f"[{-big}]".encode()), [-big])
    assert jsonio.loads(jsonio.dumps({"id": big})) == {"id": big}


def test_what_json_encodes_differently_or_refuses_goes_to_json() -> None:
    class Level(enum.IntEnum):
        HIGH = 2

    class Tag(enum.StrEnum):
        A = "a"

    @dataclasses.dataclass
    class Point:
        x: int

    assert jsonio.dumps({"level": Level.HIGH, "tag": Tag.A}) == json.dumps(
        {"level": Level.HIGH, "tag": Tag.A}, separators=(",", ":"))
    assert jsonio.dumps({1: "int key"}) == '{"1":"int key"}'
    assert jsonio.dumps("\ud800") == '"\\ud800"'  # a lone surrogate, escaped as json does
    for refused in (Point(1), datetime(2026, 1, 1, tzinfo=UTC), {"set"}):
        with pytest.raises(TypeError):
            jsonio.dumps(refused)


def test_text_orjson_refuses_is_read_by_json() -> None:
    assert jsonio.loads('{"a": 1}'.encode("utf-16")) == {"a": 1}
    assert jsonio.loads(b'"\\ud800"') == "\ud800"
    with pytest.raises(ValueError):
        jsonio.loads(b'{"a": }')
