"""JSON for the hot paths (the database's JSON columns, the Bot API's bodies): orjson where it gives what the
standard library's json gives, the standard library otherwise.

Encoding and decoding JSON was 15 % of the PostgreSQL inbox worker's samples with the GIL (py-spy --gil), 10 % of
the sender's and 14 % of the web process's (docs/performance.md, tenth session); orjson does most of that work in
less time. Where the two differ, the standard library's answer is kept:

- decoding: a number beyond 64 bits is a float to orjson and an int to json, so text with a run of 19 digits or
  more (-2**63 - 1 has 19) goes to json; so does anything orjson refuses (json then accepts it or raises as before);
- encoding: orjson is told to refuse (TypeError) what json would encode differently or refuse — subclasses of
  str, int, dict and list, dataclasses, datetimes — and json encodes it or raises as before. Not kept: a float
  NaN or infinity, which json writes as ``NaN`` (not JSON: PostgreSQL refuses it) and orjson as ``null``.

The text differs in form, never in value: no spaces after separators, non-ASCII characters as UTF-8 instead of
``\\u`` escapes (as ``ensure_ascii=False`` writes them; what goes to json keeps its escapes).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_REFUSE = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_LONG_NUMBER_TEXT = re.compile(r"\d{19}")
_LONG_NUMBER_BYTES = re.compile(rb"\d{19}")


def dumps_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value, option=_REFUSE)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()  # ASCII: a lone surrogate is escaped, as before


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (non-ASCII characters as such)."""
    return dumps_bytes(value).decode()


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The value of a JSON text, as ``json.loads`` gives it."""
    if isinstance(data, str):
        long_number = _LONG_NUMBER_TEXT.search(data)
    else:
        long_number = _LONG_NUMBER_BYTES.search(data)
    if long_number is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(bytes(data) if isinstance(data, memoryview) else data)
