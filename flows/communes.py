"""Commune search over the official list (vietnam-provinces): typo-tolerant and diacritic-insensitive."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz import fuzz, process
from vietnam_provinces import Province, Ward

from flows.answers import fold

_TYPE_PREFIXES = ("dac khu ", "thi tran ", "phuong ", "xa ")
_PROVINCE_PREFIXES = ("Thành phố ", "Tỉnh ")


@dataclass(frozen=True)
class CommuneHit:
    code: int
    name: str  # "Xã Gia Lộc"
    province_code: int
    province: str  # short: "Hải Phòng"

    @property
    def label(self) -> str:
        """ "Xã Gia Lộc – Hải Phòng"."""
        return f"{self.name} – {self.province}"


def _strip_type(folded: str) -> str:
    for prefix in _TYPE_PREFIXES:
        if folded.startswith(prefix):
            return folded[len(prefix):]
    return folded


def province_short(name: str) -> str:
    for prefix in _PROVINCE_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@lru_cache(maxsize=1)
def _index() -> tuple[tuple[CommuneHit, ...], tuple[str, ...]]:
    provinces = {int(p.code): province_short(p.name) for p in Province.iter_all()}
    hits: list[CommuneHit] = []
    keys: list[str] = []
    for ward in Ward.iter_all():
        pcode = int(ward.province_code)
        hits.append(CommuneHit(int(ward.code), ward.name, pcode, provinces.get(pcode, "")))
        keys.append(_strip_type(fold(ward.name)))
    return tuple(hits), tuple(keys)


def warm() -> int:
    """Build the index now (else the first lookup builds it); returns the number of communes."""
    return len(_index()[0])


def commune(code: int) -> CommuneHit | None:
    """The commune with this official code."""
    for hit in _index()[0]:
        if hit.code == code:
            return hit
    return None


def _search_in(query: str, items: list[tuple[CommuneHit, str]], limit: int) -> list[CommuneHit]:
    exact = [hit for hit, key in items if key == query]
    if exact:
        return exact[:limit]
    choices = [key for _, key in items]
    found = process.extract(query, choices, scorer=fuzz.ratio, limit=limit * 3, score_cutoff=75)
    if not found:
        found = process.extract(query, choices, scorer=fuzz.WRatio, limit=limit * 3, score_cutoff=88)
    if not found:
        return []
    best = found[0][1]
    # keep the near-best only, so "gia loc" does not also offer "Gia Lâm"-like neighbours when exact-ish
    return [items[idx][0] for _, score, idx in found if score >= best - 8][:limit]


def search(query: str, *, served: Iterable[int] = (), limit: int = 5) -> list[CommuneHit]:
    """Communes matching what a person typed; communes in ``served`` (province or commune codes) first."""
    folded = fold(query)
    for word in ("o ", "tai ", "toi o "):
        if folded.startswith(word):
            folded = folded[len(word):]
    folded = _strip_type(folded)
    if len(folded) < 2:
        return []
    hits, keys = _index()
    items = list(zip(hits, keys, strict=True))
    served_set = {int(code) for code in served}
    if served_set:
        local = [(h, k) for h, k in items if h.code in served_set or h.province_code in served_set]
        found = _search_in(folded, local, limit)
        if found:
            return found
    return _search_in(folded, items, limit)
