"""Free-text answer parsing: diacritic-insensitive, forgiving of how people type on a small phone."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from flows.types import Button

_PUNCT = re.compile(r"[^\w%/+.,\- ]+")
_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Lower case, no diacritics (đ → d), single spaces: "  Xã Gia Lộc " → "xa gia loc"."""
    text = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    text = _PUNCT.sub(" ", text.lower())
    return _SPACES.sub(" ", text).strip(" .,")


YES = {"co", "c", "yes", "y", "ok", "oke", "okay", "dung", "dung vay", "vang", "da", "da co", "co a", "roi",
       "co roi", "dong y", "u", "uh", "um", "v"}
NO = {"khong", "ko", "k", "kg", "khg", "no", "n", "chua", "chua co", "khong co", "khong a", "sai", "hong"}
NA = {"khong ap dung", "kad", "na", "n/a", "ko ap dung", "k ap dung", "khong lien quan", "khong co tre"}

_NUMBER_WORDS = {
    "khong": 0, "mot": 1, "hai": 2, "ba": 3, "bon": 4, "tu": 4, "nam": 5, "lam": 5, "sau": 6, "bay": 7,
    "tam": 8, "chin": 9, "muoi": 10, "muoi mot": 11, "muoi hai": 12, "muoi ba": 13, "muoi bon": 14,
    "muoi lam": 15, "hai muoi": 20, "mot tram": 100, "tram": 100,
}


_UNITS = {"buoi", "nguoi", "lan", "khoa", "lop", "ho", "nam", "cuon", "cai", "dot"}


def parse_yes_no(text: str) -> bool | str | None:
    """True, False, "na" (không áp dụng) or None when it is not a yes/no answer."""
    f = fold(text)
    if f in NA:
        return "na"
    if f in YES:
        return True
    if f in NO:
        return False
    return None


def parse_int(text: str) -> int | None:
    """An integer from "12", "1.000", "1 000", "12 buổi", "ba", "mười hai"; None if there is none."""
    f = fold(text)
    words = f.split(" ")
    while len(words) > 1 and words[-1] in _UNITS:
        words.pop()
    if " ".join(words) in _NUMBER_WORDS:
        return _NUMBER_WORDS[" ".join(words)]
    # ASCII digits only, and at most 12 of them: "²" or "①" are not numbers for int(), and Python refuses
    # int() of more than 4300 digits; no answer people type is that long
    match = re.match(r"^\s*([0-9]{1,3}(?:[.,\s][0-9]{3}){1,3}|[0-9]{1,12})(?:\s|$|[a-z%])", f + " ")
    if not match:
        return None
    return int(re.sub(r"[.,\s]", "", match.group(1)))


def parse_percent(text: str) -> float | None:
    """A percentage 0–100 from "70%", "70", "70 %", "100", "tất cả", "một nửa", "1/2"; None otherwise."""
    f = fold(text)
    if f in {"tat ca", "het", "ca nha", "moi nguoi", "toan bo", "du", "day du"}:
        return 100.0
    if f in {"mot nua", "nua", "phan nua"}:
        return 50.0
    if f in {"khong ai", "khong co ai", "chua ai"}:
        return 0.0
    frac = re.fullmatch(r"([0-9]{1,9})\s*/\s*([0-9]{1,9})", f)
    if frac:
        num, den = int(frac.group(1)), int(frac.group(2))
        if den == 0 or num > den:
            return None
        return round(100.0 * num / den, 1)
    match = re.fullmatch(r"(\d+(?:[.,]\d+)?)\s*(%|phan tram)?", f)
    if not match:
        words = parse_int(f) if any(w in f for w in ("phan tram", "%")) else None
        return float(words) if words is not None and 0 <= words <= 100 else None
    value = float(match.group(1).replace(",", "."))
    return value if 0 <= value <= 100 else None


def match_button(text: str, buttons: Sequence[Button]) -> str | None:
    """The value of the button a typed text means: its number ("1"), its label or value without diacritics."""
    f = fold(text)
    if not f or not buttons:
        return None
    if re.fullmatch(r"[0-9]{1,3}", f) and 1 <= int(f) <= len(buttons):
        return buttons[int(f) - 1].value
    stripped = f.lstrip("«» ").strip()
    for button in buttons:
        label = fold(button.label).strip("«» .…").strip()
        if stripped in (label, fold(button.value)):
            return button.value
    # a typed prefix of one label only ("gui" for "Gửi Hội Khuyến học")
    prefixed = [b for b in buttons if len(stripped) >= 3 and fold(b.label).strip("«» ").startswith(stripped)]
    if len(prefixed) == 1:
        return prefixed[0].value
    return None


_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")


def normalize_phone(text: str) -> str | None:
    """A Vietnamese mobile or landline number as +84…; accepts 0xxxxxxxxx, 84…, +84…, spaces and dots."""
    raw = _PHONE_SEPARATORS.sub("", text.strip())
    if raw.startswith("+84"):
        rest = raw[3:]
    elif raw.startswith("0084"):
        rest = raw[4:]
    elif raw.startswith("84") and len(raw) == 11:
        rest = raw[2:]
    elif raw.startswith("0"):
        rest = raw[1:]
    else:
        return None
    rest = rest.lstrip("0") if raw.startswith("+840") else rest
    if not rest.isdigit() or len(rest) != 9 or rest[0] == "0":
        return None
    return "+84" + rest


def format_int(value: float | int) -> str:
    """1000 → "1.000", 95.0 → "95", 92.5 → "92,5" (the Vietnamese way)."""
    if float(value).is_integer():
        return f"{int(value):,}".replace(",", ".")
    whole, _, frac = f"{value:.1f}".partition(".")
    return f"{int(whole):,}".replace(",", ".") + "," + frac
