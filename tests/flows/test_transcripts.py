"""One generic driver for the conversation transcripts in tests/flows/transcripts/*.yaml.

Each file holds one transcript or a list of them:

    name: ...
    now: 2026-11-10T09:00:00+07:00     # fixed clock; ``later_days`` in a step moves it on
    world: {...}                        # the in-memory world (see fakeview.py)
    state: {step: ..., data: {...}}     # optional starting state
    taps_max: 30                        # optional: at most this many things the person does
    steps:
      - send: "co"                      # or press: "<button label>", command: "start v_abc",
                                        # photo: "<sha>", contact: "0912...", unsupported: sticker,
                                        # stale_button: "<value>" (a button of an old message),
                                        # set: {...} (a change in the world between messages)
        bad: wrong_type                 # tags a bad-input case (counted by a test)
        says: "Câu 2/10"                # substring(s) of what the bot said
        buttons: ["Có", "Không"]        # the labels of the last message with buttons
        step: assess
        effects: [{type: SaveAnswer, criterion: c1_1, value: true}]
        saved: {"household:1/gia_dinh/2026": {c1_1: true}}

Between every two steps the state goes through JSON and back, as if the server restarted.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.engine import MAX_BUTTON, handle
from flows.types import ConversationState, Event, PhotoRef, Say
from tests.flows.fakeview import FakeView

HERE = Path(__file__).parent / "transcripts"
USER_KEYS = ("send", "press", "stale_button", "command", "photo", "contact", "unsupported")
MAX_TEXT = 300


def load_transcripts() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in data if isinstance(data, list) else [data]:
            case["file"] = path.name
            cases.append(case)
    return cases


CASES = load_transcripts()


def _event(step: dict[str, Any], last_buttons: tuple[Any, ...]) -> Event | None:
    if "send" in step:
        return Event("text", text=str(step["send"]))
    if "press" in step:
        label = str(step["press"])
        for button in last_buttons:
            if button.label == label:
                return Event("button", text=label, value=button.value)
        raise AssertionError(f"no button {label!r} offered; offered: {[b.label for b in last_buttons]}")
    if "stale_button" in step:  # a button from an old message, pressed late
        return Event("button", value=str(step["stale_button"]))
    if "command" in step:
        name, _, payload = str(step["command"]).partition(" ")
        return Event("command", text=name, value=payload)
    if "photo" in step:
        return Event("photo", photo=PhotoRef(str(step["photo"]), 1280, 960))
    if "contact" in step:
        return Event("contact", text=str(step["contact"]))
    if "unsupported" in step:
        return Event("unsupported", value=str(step["unsupported"]))
    return None


def _effect_json(effect: Any) -> dict[str, Any]:
    data = {"type": type(effect).__name__}
    for f in dataclasses.fields(effect):
        value = getattr(effect, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "key"):
            value = value.key()
        elif isinstance(value, Say):
            value = value.to_json()
        data[f.name] = value
    return data


def _matches(expected: dict[str, Any], actual: dict[str, Any]) -> bool:
    return all(actual.get(k) == v for k, v in expected.items())


def _check_output(out: Say, where: str) -> None:
    assert len(out.text) <= MAX_TEXT, f"{where}: message longer than {MAX_TEXT}: {out.text!r}"
    for b in out.buttons:
        assert 0 < len(b.label) <= MAX_BUTTON, f"{where}: button too long: {b.label!r}"
        assert b.value, f"{where}: button without a value"
    assert len({b.value for b in out.buttons}) == len(out.buttons), f"{where}: two buttons with one value"


def run_transcript(case: dict[str, Any]) -> FakeView:
    now = datetime.fromisoformat(str(case.get("now", "2026-11-10T09:00:00+07:00")))
    view = FakeView(case.get("world"))
    state = ConversationState.from_json(case.get("state"))
    last_buttons: tuple[Any, ...] = ()
    if state.data.get("prompt"):
        last_buttons = Say.from_json(state.data["prompt"]).buttons
    taps = 0
    for n, step in enumerate(case["steps"], 1):
        where = f"{case['file']}: {case['name']!r} step {n} {({k: step[k] for k in USER_KEYS if k in step})}"
        if "set" in step:
            view.set(step["set"])
        if "later_days" in step:
            now += timedelta(days=int(step["later_days"]))
        event = _event(step, last_buttons)
        if event is None:
            continue
        taps += 1
        # as if the server restarted between every two messages: state only survives as JSON
        state = ConversationState.from_json(json.loads(json.dumps(state.to_json(), ensure_ascii=False)))
        result = handle(state, event, view, now, raise_errors=True)
        for effect in result.effects:
            view.apply(effect)
        state = result.state
        json.dumps(state.to_json())  # must stay JSON-able
        said = "\n".join(o.text for o in result.outputs)
        for out in result.outputs:
            _check_output(out, where)
        with_buttons = [o for o in result.outputs if o.buttons]
        if with_buttons:
            last_buttons = with_buttons[-1].buttons
        if step.get("silent"):  # e.g. the 2nd photo of an album: one question for the whole album
            assert not result.outputs, f"{where}: expected silence, got {said!r}"
        else:
            assert result.outputs, f"{where}: the bot said nothing"
        expected = step.get("says", [])
        for text in [expected] if isinstance(expected, str) else expected:
            assert text in said, f"{where}: expected {text!r} in:\n{said}"
        for text in step.get("not_says", []):
            assert text not in said, f"{where}: did not expect {text!r} in:\n{said}"
        if "buttons" in step:
            labels = [b.label for b in (with_buttons[-1].buttons if with_buttons else ())]
            assert labels == step["buttons"], f"{where}: buttons {labels}"
        if "has_buttons" in step:
            labels = [b.label for b in last_buttons]
            missing = [x for x in step["has_buttons"] if x not in labels]
            assert not missing, f"{where}: buttons {labels} lack {missing}"
        if "step" in step:
            assert state.step == step["step"], f"{where}: step is {state.step!r}\n{said}"
        actual = [_effect_json(e) for e in result.effects]
        if step.get("no_effects"):
            assert not actual, f"{where}: unexpected effects {actual}"
        for exp in step.get("effects", []):
            assert any(_matches(exp, a) for a in actual), f"{where}: no effect like {exp} in {actual}"
        if "effect_types" in step:
            assert [a["type"] for a in actual] == step["effect_types"], f"{where}: effects {actual}"
        for key, answers in (step.get("saved") or {}).items():
            got = view.assessments[view._key(key)].answers
            for cid, value in answers.items():
                assert got.get(cid, "<missing>") == value, f"{where}: {key} {cid} = {got.get(cid)!r}"
        for key, status in (step.get("status") or {}).items():
            assert view.assessments[view._key(key)].status == status, f"{where}: status of {key}"
        for key, photos in (step.get("photos") or {}).items():
            got = {k: len(v) for k, v in view.assessments[view._key(key)].evidence.items()}
            assert got == photos, f"{where}: photos {got}"
        if "notified" in step:
            assert [p for p, _ in view.notified] == step["notified"], f"{where}: notified {view.notified}"
        if "registered" in step:
            regs = sorted(f"{s}/{tt}/{y}" for s, tt, y in view.regs)
            assert regs == sorted(step["registered"]), f"{where}: registrations {regs}"
    if "taps_max" in case:
        assert taps <= case["taps_max"], f"{case['name']}: {taps} taps"
    return view


@pytest.mark.parametrize("case", CASES, ids=[f"{c['file']}::{c['name']}" for c in CASES])
def test_transcript(case: dict[str, Any]) -> None:
    run_transcript(case)


def test_at_least_15_kinds_of_bad_input() -> None:
    kinds = {step["bad"] for case in CASES for step in case["steps"] if "bad" in step}
    assert len(kinds) >= 15, sorted(kinds)


def test_every_reminder_button_is_handled_from_any_state() -> None:
    """Each "go:" value of bot/campaigns.yaml, pressed mid-assessment, idle and mid-signup: an answer, never an error."""
    from flows.engine import TITLES

    campaigns = yaml.safe_load((Path(__file__).resolve().parents[2] / "bot" / "campaigns.yaml").read_text("utf-8"))
    values = {b["value"] for c in campaigns["campaigns"].values()
              for b in [*c.get("buttons", []), *c.get("attention_buttons", [])]}
    values |= {v.replace("{title}", tt) for v in values if "{title}" in v for tt in (*TITLES, "")}
    values |= {"cmd:trangthai", "cmd:bosung"}  # the commune's decision messages (webhook/admin.py)
    case = next(c for c in CASES if c["name"].startswith("a reminder's \"Để sau\" in the middle"))
    now = datetime.fromisoformat("2026-11-10T09:00:00+07:00")
    for value in sorted(values):
        for world, state in ((case["world"], ConversationState()),
                             (case["world"], ConversationState("assess", {"a": {
                                 "subject": "household:1", "title": "gia_dinh", "year": 2026, "i": 1,
                                 "mode": "flow", "skipped": []}})),
                             ({}, ConversationState("name", {"role": "household", "commune": 10999,
                                                             "prompt": {"text": "?", "buttons": []}}))):
            view = FakeView(world)
            result = handle(state, Event("button", value=value), view, now, raise_errors=True)
            assert result.outputs, value
            for out in result.outputs:
                _check_output(out, value)
            if not world:  # mid-signup: what was typed is kept
                assert result.state.data.get("commune") == 10999, value


def test_household_reaches_submitted_with_photos_in_30_taps() -> None:
    case = next(c for c in CASES if c.get("happy_path"))
    taps = sum(1 for step in case["steps"] if any(k in step for k in USER_KEYS))
    assert taps <= 30, taps
    view = run_transcript(case)
    me = view.me()
    assert me is not None and me.household_id is not None
    a = view.assessments[(f"household:{me.household_id}", "gia_dinh", 2026)]
    assert a.status == "submitted"
    assert a.evidence.get("c3_2"), "the required photo is attached"


def test_every_transcript_area_is_covered() -> None:
    files = {c["file"] for c in CASES}
    for needed in ("signup.yaml", "registration.yaml", "assessment.yaml", "photos.yaml", "leader.yaml",
                   "clan.yaml", "officer.yaml", "always.yaml", "bad_input.yaml", "reminders.yaml", "unit.yaml",
                   "citizen.yaml", "leader_note.yaml"):
        assert needed in files, needed
