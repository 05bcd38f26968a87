"""Bug (found by tests/test_fuzz_answers.py, since fixed in flows/answers.py; kept as a regression test):
Typing a digit-like sign such as "①" or "²" at a question with buttons makes the flows raise.

flows/answers.py ``match_button`` checks ``f.isdigit()`` and then calls ``int(f)``; ``str.isdigit()`` is
true for "①", "²", "⁵" but int() refuses them (ValueError), so handle() answers "common.error" instead of
matching or re-asking. Suggested fix: ``f.isdecimal()`` (or ``re.fullmatch(r"[0-9]{1,3}", f)``).
"""

from __future__ import annotations

import pytest

from flows import answers as ans
from flows.types import Button

BUTTONS = [Button("Có", "yes"), Button("Không", "no"), Button("Không áp dụng", "na")]


@pytest.mark.parametrize("text", ["①", "²", "⁵", "③"])
def test_digit_signs_do_not_raise(text: str) -> None:
    assert ans.match_button(text, BUTTONS) in (None, "yes", "no", "na")
