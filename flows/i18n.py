"""Vietnamese message catalog: every text a person reads lives in flows/catalog/*.yaml, not in code."""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CATALOG_DIR = Path(__file__).parent / "catalog"


class CatalogError(ValueError):
    """A catalog file is broken, a key is defined twice, or a placeholder is missing."""


@lru_cache(maxsize=1)
def catalog() -> dict[str, str]:
    """All messages, merged from every catalog file; a key may be defined in one file only."""
    merged: dict[str, str] = {}
    for path in sorted(CATALOG_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise CatalogError(f"{path.name}: expected a mapping of key: text")
        for key, text in data.items():
            if key in merged:
                raise CatalogError(f"{path.name}: key {key!r} is defined twice")
            if not isinstance(text, str):
                raise CatalogError(f"{path.name}: {key!r} must be a string")
            merged[str(key)] = text.rstrip("\n")
    return merged


def placeholders(text: str) -> set[str]:
    """The {names} a message expects."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def t(key: str, **values: Any) -> str:
    """The message ``key`` with its placeholders filled; a missing key or value is a bug, so it raises."""
    try:
        text = catalog()[key]
    except KeyError as exc:
        raise CatalogError(f"no message {key!r} in the catalog") from exc
    missing = placeholders(text) - values.keys()
    if missing:
        raise CatalogError(f"message {key!r} needs {sorted(missing)}")
    return text.format(**values)
