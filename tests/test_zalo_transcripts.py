"""The flows' transcript tests (tests/flows/transcripts/*.yaml), replayed as a Zalo Bot user sees them.

Every bot message with buttons is rendered as Zalo text (a numbered list); every "press: <label>" becomes
the digit in front of that label in the rendered text (or, on a number question, the label typed without
diacritics), which must map back to the same button value; the typed text then goes through the Zalo
adapter's ``choice_event`` exactly as bot/zalo.py does, and every assertion of the transcript must still
hold. The flows are not changed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from bot import zalo
from flows import answers
from flows.types import ConversationState, Event, Say
from tests.fakes.zalo_server import NUMBERED
from tests.flows import test_transcripts as tt

CASES = tt.CASES


class ZaloUser:
    """Replaces the transcript driver's ``_event`` and watches ``handle`` to know what was shown."""

    def __init__(self) -> None:
        self.shown: Say | None = None  # the last message sent (what a Zalo Bot user read last)
        self.menu: Say | None = None  # the last message with buttons
        self.state: ConversationState | None = None
        self.digits = 0
        self.words = 0

    def handle(self, state: ConversationState, event: Event, view: Any, now: Any, **kw: Any) -> Any:
        result = tt_handle(state, event, view, now, **kw)
        self.state = result.state
        if result.outputs:
            self.shown = result.outputs[-1]
            with_buttons = [o for o in result.outputs if o.buttons]
            if with_buttons:
                self.menu = with_buttons[-1]
        return result

    def prompt(self) -> Say | None:
        data = self.state.data if self.state is not None else {}
        return Say.from_json(data["prompt"]) if data.get("prompt") else None

    def event(self, step: dict[str, Any], last_buttons: tuple[Any, ...]) -> Event | None:
        if "press" in step:
            assert self.menu is not None and self.menu.buttons == last_buttons
            label = str(step["press"])
            button = next((b for b in last_buttons if b.label == label), None)
            assert button is not None, f"no button {label!r}"
            typed = self.type_for(self.menu, label)
            if not typed[:1].isdigit():  # a digit, or a share ("100%") typed on a number question
                assert zalo.match_offered(typed, self.menu) == button, (typed, label)
            return zalo.choice_event(typed, self.shown, self.prompt())
        if "send" in step:
            return zalo.text_event(str(step["send"]), self.shown, self.prompt())
        return tt_event(step, last_buttons)

    def type_for(self, menu: Say, label: str) -> str:
        """What a Zalo user types to choose ``label``: its number in the rendered list, else the words."""
        rendered = zalo.render_text(menu)
        assert len(rendered) <= 4000
        want = answers.fold(label.rstrip("…"))
        for number, shown in NUMBERED.findall(rendered):
            if answers.fold(shown).startswith(want):
                button = menu.buttons[int(number) - 1]
                # the digit maps back to the very same button value
                assert zalo.match_offered(number, menu) == button, (number, label)
                assert button.label == label or label.rstrip("…") in button.label
                self.digits += 1
                return number
        assert zalo.is_numeric_prompt(menu), f"{label!r} is not numbered in:\n{rendered}"
        self.words += 1
        folded = answers.fold(label)
        return label if folded[:1].isdigit() else folded


tt_handle = tt.handle
tt_event = tt._event


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']}::{c['name']}" for c in CASES])
def test_transcript_through_zalo_numbered_choices(case: dict[str, Any], monkeypatch) -> None:
    user = ZaloUser()
    monkeypatch.setattr(tt, "handle", user.handle)
    monkeypatch.setattr(tt, "_event", user.event)
    tt.run_transcript(case)


def test_most_presses_become_digits() -> None:
    digits = words = 0
    for case in CASES:
        user = ZaloUser()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tt, "handle", user.handle)
            mp.setattr(tt, "_event", user.event)
            with contextlib.suppress(Exception):  # a failing case is reported by the test above
                tt.run_transcript(case)
        digits += user.digits
        words += user.words
    assert digits > 50 and digits > 5 * words, (digits, words)


def test_every_button_message_of_the_transcripts_renders_and_maps_back() -> None:
    """Each bot output with buttons: rendered as numbers, each number maps to its own button's value."""
    seen = 0
    for case in CASES:
        outputs: list[Say] = []

        def spy(state: Any, event: Any, view: Any, now: Any, *, _out: list[Say] = outputs, **kw: Any) -> Any:
            result = tt_handle(state, event, view, now, **kw)
            _out.extend(o for o in result.outputs if o.buttons)
            return result

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tt, "handle", spy)
            with contextlib.suppress(Exception):  # a failing case is reported by the transcript tests
                tt.run_transcript(case)
        for say in outputs:
            seen += 1
            text = zalo.render_text(say)
            if zalo.is_numeric_prompt(say):
                assert "Hoặc gõ:" in text
                for button in say.buttons:
                    typed = answers.fold(button.label)
                    if not typed[:1].isdigit():
                        assert zalo.match_offered(typed, say) == button
                continue
            for n, button in enumerate(say.buttons, 1):
                assert zalo.match_offered(str(n), say) == button
                assert zalo.choice_event(str(n), say, None) == Event(kind="button", value=button.value,
                                                                    text=button.label)
    assert seen > 100
