"""Free-text answers to every question of every criteria set, fuzzed through the flows.

For each askable criterion of each title (yes/no, choice, share, number), the person types anything:
Vietnamese number separators ("1.000"), percentages ("70%"), number words ("bảy mươi"), emoji, 10,000
characters, right-to-left marks, NUL bytes... The flows (run with ``raise_errors=True``, so nothing is
swallowed) must never raise, and the outcome is one of:
- a valid answer saved (a SaveAnswer whose value fits the question's type and range), or
- the same question asked again (step "assess", same question index, no SaveAnswer), or
- a navigation the text really meant: a button matched by number or label (back, skip, later), or a command.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from flows import answers as ans
from flows import engine
from flows.effects import SaveAnswer
from flows.types import ConversationState, Event
from tests.flows.fakeview import FakeView

NOW = datetime.fromisoformat("2026-11-10T09:00:00+07:00")
EXAMPLES = 150  # per question type; see docs/reliability.md
WORLD = {
    "me": 1,
    "persons": [
        {"id": 1, "name": "Nguyễn Văn An", "phone": "+84912345678", "commune": 10999, "village": 1,
         "roles": [["household", "granted"], ["village_leader", "granted"], ["clan_head", "granted"],
                   ["unit_rep", "granted"]]},
    ],
    "villages": [{"id": 1, "name": "Thôn Đông", "commune": 10999, "code": "dong01"}],
    "households": [{"id": 1, "head": "Nguyễn Văn An", "commune": 10999, "village": 1, "head_person": 1}],
    "clans": [{"id": 1, "name": "Họ Nguyễn", "commune": 10999, "head_person": 1}],
    "units": [{"id": 1, "name": "Trường Tiểu học", "commune": 10999, "rep_person": 1, "staff": 40}],
}
SUBJECTS = {
    "gia_dinh": "household:1",
    "cong_dong": "village:1",
    "dong_ho": "clan:1",
    "don_vi": "unit:1",
    "cong_dan": "person:1",
}


def _long_digits_bug() -> bool:
    """True while tests/reliability/test_bug_long_digit_answer.py fails (int() of > 4300 digits raises)."""
    try:
        ans.parse_int("9" * 5000)
        ans.match_button("9" * 5000, [engine.Button("Có", "yes")])
    except ValueError:
        return True
    return False


def _digit_sign_bug() -> bool:
    """True while tests/reliability/test_bug_unicode_digit_answer.py fails ("①".isdigit() but int() raises)."""
    try:
        ans.match_button("①", [engine.Button("Có", "yes")])
    except ValueError:
        return True
    return False


LONG_DIGITS_BUG = _long_digits_bug()
DIGIT_SIGN_BUG = _digit_sign_bug()


def _questions() -> dict[str, list[tuple[str, int]]]:
    """(title, question index) of every askable criterion, grouped by answer type."""
    view = FakeView(WORLD)
    out: dict[str, list[tuple[str, int]]] = {}
    for title in SUBJECTS:
        for i, c in enumerate(engine._askable(view.criteria(title))):
            out.setdefault(c.answer, []).append((title, i))
    return out


QUESTIONS = _questions()


def question_state(view: FakeView, title: str, i: int) -> ConversationState:
    """The state right after the bot asked question ``i`` of ``title`` (its prompt and buttons included)."""
    ctx = engine.Ctx(ConversationState(), view, NOW)
    a = {"subject": SUBJECTS[title], "title": title, "year": 2026, "i": i, "mode": "flow", "skipped": []}
    engine._ask_question(ctx, a)
    return ConversationState.from_json(json.loads(json.dumps({"step": ctx.step, "data": ctx.data})))


def _valid(c: Any, value: Any) -> bool:
    if value == "na":
        return c.not_applicable == "full"
    if c.answer == "yes_no":
        return isinstance(value, bool)
    if c.answer == "choice":
        return any(o.value == value for o in c.options)
    if c.answer == "share":
        return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100
    return isinstance(value, int) and int(c.min or 0) <= value <= int(c.max or 0)


SPECIAL = [
    "1.000", "1,000", "1 000", "70%", "70 %", "70,5%", "100", "101", "-5", "0", "1/2", "3/0", "bảy mươi",
    "bảy mươi phần trăm", "mười hai", "một nửa", "tất cả", "có", "Có", "co", "không", "ko", "không áp dụng",
    "kad", "🎉🎉🎉", "👍", "x" * 10_000, "9" * 10_000, "1" + ".000" * 2000, "\u200f70%\u200f", "\u202eكلا",
    "\u200e1.000", "7\x000", "\x00", "\x00có", "", " ", "\n\n", "\t", "1e9", "NaN", "inf", "٣٠", "３０",
    "①", "½", "70‰", "1", "2", "3", "4", "5", "9", "99999999999999999999", "Để sau", "quay lai", "/huy",
    "/danhgia", "huy", "tro giup", "\ufeff50", "5\u0301", "đ" * 300,
]
answer_texts = st.one_of(
    st.integers(min_value=0, max_value=len(SPECIAL) - 1).map(SPECIAL.__getitem__),
    st.text(max_size=30),
    st.text(alphabet="0123456789.,% /-", max_size=20),
    st.tuples(st.integers(min_value=-10, max_value=10**6), st.sampled_from(["", "%", " %", " người", " buổi"])).map(
        lambda t: f"{t[0]:,}".replace(",", ".") + t[1]
    ),
    st.lists(st.sampled_from(["bảy", "mươi", "mười", "hai", "một", "trăm", "nửa", "phần", "trăm", "lăm"]),
             min_size=1, max_size=4).map(" ".join),
)


def check_answer(title: str, i: int, text: str) -> str:
    """Send ``text`` at question ``i`` of ``title``; assert the property; returns the outcome's kind."""
    view = FakeView(WORLD)
    state = question_state(view, title, i)
    c = engine._askable(view.criteria(title))[i]
    buttons = engine.Say.from_json(state.data["prompt"]).buttons
    step = engine.handle(state, Event("text", text=text), view, NOW, raise_errors=True)
    json.dumps(step.state.to_json())  # the state must stay storable
    assert step.outputs, f"{title} q{i}: silence for {text[:80]!r}"
    saves = [e for e in step.effects if isinstance(e, SaveAnswer)]
    if saves:
        assert len(saves) == 1 and saves[0].criterion == c.id
        assert _valid(c, saves[0].value), f"{title}/{c.id} ({c.answer}): {text[:80]!r} saved {saves[0].value!r}"
        return "saved"
    if step.state.step == "assess" and step.state.data["a"]["i"] == i:
        return "asked_again"
    folded = ans.fold(text)
    meant = (
        text.strip().startswith("/")
        or folded in engine.WORD_COMMANDS
        or ans.match_button(text, buttons) is not None
    )
    assert meant, f"{title}/{c.id}: {text[:80]!r} moved to {step.state.step} without meaning to"
    return "navigated"


@pytest.mark.parametrize("kind", sorted(QUESTIONS))
def test_any_typed_answer_is_parsed_or_asked_again(kind: str) -> None:
    questions = QUESTIONS[kind]
    outcomes: dict[str, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(q=st.sampled_from(questions), text=answer_texts)
    @example(q=questions[0], text="x" * 10_000)
    @example(q=questions[0], text="9" * 10_000)
    @example(q=questions[0], text="\x00")
    @example(q=questions[0], text="\u200f70%")
    def check(q: tuple[str, int], text: str) -> None:
        # a known bug with its own failing test; once fixed, these inputs are fuzzed again
        assume(not (LONG_DIGITS_BUG and len(re.findall(r"\d", text)) >= 4000))
        assume(not (DIGIT_SIGN_BUG and any(ch.isdigit() and not ch.isdecimal() for ch in text)))
        kind_ = check_answer(q[0], q[1], text)
        outcomes[kind_] = outcomes.get(kind_, 0) + 1

    check()
    assert outcomes.get("asked_again", 0) > 0


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("70%", "share", 70),
        ("70 %", "share", 70),
        ("bảy mươi phần trăm", "share", None),  # not understood: asked again, never a wrong number
        ("1/2", "share", 50),
        ("tất cả", "share", 100),
        ("101", "share", None),
        ("có", "yes_no", True),
        ("ko", "yes_no", False),
        ("👍", "yes_no", None),
    ],
)
def test_vietnamese_forms(text: str, kind: str, expected: Any) -> None:
    title, i = QUESTIONS[kind][0]
    view = FakeView(WORLD)
    state = question_state(view, title, i)
    step = engine.handle(state, Event("text", text=text), view, NOW, raise_errors=True)
    saves = [e.value for e in step.effects if isinstance(e, SaveAnswer)]
    assert saves == ([] if expected is None else [expected])
