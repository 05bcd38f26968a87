"""Bug (found by tests/test_fuzz_answers.py, since fixed in flows/answers.py; kept as a regression test):
An answer of more than 4300 digits makes the flows raise instead of asking again.

Python 3.11 refuses int() of strings longer than 4300 digits (ValueError). flows/answers.py converts typed
digits with int() in ``parse_int`` (the ``int(re.sub(...))`` at the end) and ``match_button``
(``int(f)``); handle() then swallows the error and answers "common.error" instead of re-asking.
Suggested fix: bound the digit runs before converting (e.g. ``\\d{1,12}`` in parse_int's pattern, and
``len(f) <= 3`` before ``int(f)`` in match_button): no answer or button number is that long.
"""

from __future__ import annotations

from flows import answers as ans
from flows.types import Button


def test_parse_int_of_ten_thousand_digits_is_not_a_number() -> None:
    assert ans.parse_int("9" * 10_000) is None
    assert ans.parse_int("1" + ".000" * 2000) is None


def test_match_button_of_ten_thousand_digits_matches_nothing() -> None:
    assert ans.match_button("9" * 10_000, [Button("Có", "yes"), Button("Không", "no")]) is None
