"""The conversations, as a pure function: (state, event, view, now) → (new state, outputs, effects).

State is plain JSON: ``step`` is a readable name ("commune", "assess", "summary"...), ``data`` holds what
the step needs. ``data["prompt"]`` is the last question asked, so that bad input can repeat it, and a
photo or a command in the middle of a step can come back to it.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows import answers as ans
from flows import communes
from flows.criteria import CriteriaSet, Criterion, ScoreResult, score, score_criterion
from flows.effects import (
    AddClanMember,
    AttachEvidence,
    CancelRegistration,
    ConfirmSubmission,
    CreateClan,
    CreateHousehold,
    CreateUnit,
    Effect,
    GrantRole,
    NotifyPerson,
    ProposeVillage,
    QuestionSubmission,
    RegisterPerson,
    RegisterTitle,
    RequestRole,
    SaveAnswer,
    SendLoginLink,
    Subject,
    SubmitAssessment,
)
from flows.i18n import catalog, t
from flows.types import Button, ConversationState, Event, Say
from flows.view import EDITABLE, AssessmentInfo, PersonInfo, View

log = logging.getLogger(__name__)

MAX_BUTTON = 20
ROLES = ("household", "clan_head", "village_leader", "officer", "unit_rep")
PENDING_ROLES = ("village_leader", "officer")
NO_VILLAGE_ROLES = ("officer", "unit_rep")  # a commune officer and an agency/school/enterprise have no village
ROLE_BUTTON = {
    "household": "btn.role_household",
    "clan_head": "btn.role_clan",
    "village_leader": "btn.role_leader",
    "officer": "btn.role_officer",
    "unit_rep": "btn.role_unit",
}
# a role typed instead of pressed (folded words, checked in this order)
ROLE_WORDS = (
    ("village_leader", ("truong thon", "chi hoi", "to truong", "truong xom", "truong ap", "truong ban")),
    ("clan_head", ("dong ho", "truong ho", "toc truong", "truong toc")),
    ("officer", ("can bo", "cong chuc", "uy ban")),
    ("unit_rep", ("co quan", "truong hoc", "doanh nghiep", "cong ty", "don vi", "nha truong", "hop tac xa")),
    ("household", ("chu ho", "gia dinh", "ho gia dinh")),
)
TITLES = ("gia_dinh", "dong_ho", "cong_dong", "don_vi", "cong_dan")
UNIT_KINDS = ("agency", "school", "enterprise")
UNIT_KIND_WORDS = {"agency": ("co quan", "uy ban", "ubnd", "tram", "benh vien", "cq"),
                   "school": ("truong", "truong hoc", "mam non", "tieu hoc", "thcs", "thpt", "hoc"),
                   "enterprise": ("doanh nghiep", "cong ty", "dn", "hop tac xa", "htx", "xi nghiep", "nha may")}
# steps in which an assessment is open in ``data["a"]``: leaving them keeps a way back ("Làm tiếp")
ASSESS_STEPS = ("assess", "evidence", "summary", "edit_pick")
# commands typed as words, without the slash (only where no button of the question means the same)
WORD_COMMANDS = {"tro giup": "trogiup", "giup": "trogiup", "huong dan": "trogiup", "huy": "huy", "thoat": "huy",
                 "menu": "batdau", "bat dau": "batdau", "danh muc": "batdau", "trang thai": "trangthai",
                 "thong ke": "thongke", "bo sung": "bosung"}
DONE_WORDS = {"xong", "da xong", "xong roi", "bo qua", "khong co", "ko co", "khong", "ko", "thoi", "het", "done"}
INVITE = re.compile(r"^\s*(?:/start\s+)?v[_\-\s]?([a-z0-9]{4,32})\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Step:
    """The whole result of one event."""

    state: ConversationState
    outputs: tuple[Say, ...]
    effects: tuple[Effect, ...]


# ------------------------------------------------------------------------------------------------ helpers


def short(label: str, limit: int = MAX_BUTTON) -> str:
    """A button label within ``limit`` characters, cut at a word with "…"."""
    label = " ".join(label.split())
    if len(label) <= limit:
        return label
    cut = label[: limit - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,–-") + "…"


def btn(key: str, value: str, **kw: Any) -> Button:
    return Button(short(t(key, **kw)), value)


def _fmt(value: float) -> str:
    return ans.format_int(value)


def _date(d: Any) -> str:
    return d.strftime("%d/%m/%Y")


def _copy_data(value: Any, memo: dict[int, Any]) -> Any:
    """copy.deepcopy for the JSON-shaped state (dicts, lists, scalars), a few times faster; shared
    sub-objects stay shared as with deepcopy, and anything else goes to deepcopy with the same memo."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    known = memo.get(id(value))
    if known is not None:
        return known
    if kind is dict:
        out: Any = {}
        memo[id(value)] = out
        for k, v in value.items():
            out[_copy_data(k, memo)] = _copy_data(v, memo)
        return out
    if kind is list:
        out = []
        memo[id(value)] = out
        out.extend(_copy_data(v, memo) for v in value)
        return out
    return copy.deepcopy(value, memo)


class Ctx:
    """One event being handled: the state being built, outputs and effects so far, and overlays."""

    def __init__(self, state: ConversationState, view: View, now: datetime) -> None:
        self.step = state.step
        self.data: dict[str, Any] = _copy_data(state.data, {})
        self.view = view
        self.now = now
        self.outputs: list[Say] = []
        self.effects: list[Effect] = []
        self._me: PersonInfo | None = None
        self._me_loaded = False
        # what this step saved, so that later questions in the same step see it (the view is read-only)
        self.saved: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.photos: dict[tuple[str, str, int], dict[str, int]] = {}
        self.registered: set[tuple[str, str, int]] = set()
        self.unregistered: set[tuple[str, str, int]] = set()

    # -- reading
    def me(self) -> PersonInfo | None:
        if not self._me_loaded:
            self._me, self._me_loaded = self.view.me(), True
        return self._me

    @property
    def year(self) -> int:
        return self.view.campaign_year(self.now)

    # -- writing
    def say(self, text: str, buttons: list[Button] | tuple[Button, ...] = (), *, ask: bool = False,
            request_contact: bool = False) -> None:
        out = Say(text, tuple(buttons), request_contact)
        self.outputs.append(out)
        if ask:
            self.data["prompt"] = out.to_json()

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def goto(self, step: str, **data: Any) -> None:
        """Enter a step; ``data`` keys are kept as the step's data (plus a few that live across steps)."""
        keep = {k: self.data[k] for k in ("resume",) if k in self.data}
        self.step = step
        self.data = {**keep, **data}

    def reask(self, error_key: str | None = None, **kw: Any) -> None:
        """One-line explanation, then the same question again."""
        if error_key:
            self.say(t(error_key, **kw))
        prompt = self.data.get("prompt")
        if prompt:
            self.outputs.append(Say.from_json(prompt))

    def prompt_buttons(self) -> tuple[Button, ...]:
        prompt = self.data.get("prompt")
        return Say.from_json(prompt).buttons if prompt else ()

    # -- overlays over the read-only view
    def assessment(self, subject: Subject, title: str, year: int) -> AssessmentInfo:
        return self.view.assessment(subject, title, year)

    def answers(self, subject: Subject, title: str, year: int) -> dict[str, Any]:
        base = dict(self.assessment(subject, title, year).answers)
        base.update(self.saved.get((subject.key(), title, year), {}))
        return base

    def evidence(self, subject: Subject, title: str, year: int) -> dict[str, int]:
        base = dict(self.assessment(subject, title, year).evidence)
        for cid, n in self.photos.get((subject.key(), title, year), {}).items():
            base[cid] = base.get(cid, 0) + n
        return base

    def registrations(self, subject: Subject, year: int) -> set[str]:
        titles = set(self.view.registrations(subject, year))
        titles |= {tt for (s, tt, y) in self.registered if s == subject.key() and y == year}
        titles -= {tt for (s, tt, y) in self.unregistered if s == subject.key() and y == year}
        return titles

    def save_answer(self, a: dict[str, Any], cid: str, value: Any) -> None:
        subject = Subject.parse(a["subject"])
        self.emit(SaveAnswer(subject, a["title"], a["year"], cid, value, a.get("proxy_by")))
        self.saved.setdefault((a["subject"], a["title"], a["year"]), {})[cid] = value

    def attach(self, subject_key: str, title: str, year: int, cid: str, photo: dict[str, Any]) -> None:
        self.emit(AttachEvidence(Subject.parse(subject_key), title, year, cid, photo["sha256"],
                                 photo.get("width", 0), photo.get("height", 0), photo.get("taken_at")))
        counts = self.photos.setdefault((subject_key, title, year), {})
        counts[cid] = counts.get(cid, 0) + 1

    def register(self, subject: Subject, title: str, year: int) -> None:
        self.emit(RegisterTitle(subject, title, year))
        self.registered.add((subject.key(), title, year))
        self.unregistered.discard((subject.key(), title, year))


# ------------------------------------------------------------------------------------------------ entry


def handle(state: ConversationState, event: Event, view: View, now: datetime, *,
           raise_errors: bool = False) -> Step:
    """Handle one event. Never raises on bad input; an unexpected error leaves the state as it was."""
    ctx = Ctx(state, view, now)
    try:
        _dispatch(ctx, event)
    except Exception:
        if raise_errors:
            raise
        log.exception("flow error in step %s", state.step)
        keep = ConversationState(state.step, copy.deepcopy(state.data))
        return Step(keep, (Say(t("common.error")),), ())
    return Step(ConversationState(ctx.step, ctx.data), tuple(ctx.outputs), tuple(ctx.effects))


def _dispatch(ctx: Ctx, ev: Event) -> None:
    if ev.kind == "command":
        _command(ctx, ev.text.lstrip("/").strip().lower(), ev.value.strip())
        return
    if ev.kind == "unsupported":
        kind_key = f"common.unsupported_kind.{ev.value or 'other'}"
        kind = t(kind_key if kind_key in catalog() else "common.unsupported_kind.other")
        ctx.say(t("common.unsupported", kind=kind))
        ctx.reask()
        return
    if ev.kind == "text" and ev.text.strip().startswith("/"):
        word, _, payload = ev.text.strip()[1:].partition(" ")
        _command(ctx, word.lower(), payload.strip())
        return
    if ev.kind == "photo" and ctx.step != "evidence":
        _photo_anywhere(ctx, ev)
        return
    choice: str | None = None
    if ev.kind == "button":
        choice = ev.value
    elif ev.kind == "text":
        choice = ans.match_button(ev.text, ctx.prompt_buttons())
    if choice is None and ev.kind == "text" and ans.fold(ev.text) in WORD_COMMANDS:
        _command(ctx, WORD_COMMANDS[ans.fold(ev.text)], "")
        return
    if choice and choice.startswith("go:"):
        _go(ctx, choice[3:])
        return
    if choice and choice.startswith("cmd:"):  # buttons of the commune's decision messages (webhook/admin.py)
        _command(ctx, choice[4:].strip().lower(), "")
        return
    handler = STEPS.get(ctx.step, _step_idle)
    handler(ctx, ev, choice)


# ------------------------------------------------------------------------------------------------ commands


def _command(ctx: Ctx, name: str, payload: str) -> None:
    if name == "start":
        match = INVITE.match(payload) if payload else None
        if match:
            _invite(ctx, match.group(1))
        elif ctx.me() is not None:
            ctx.goto("idle")
            ctx.say(t("start.welcome_back", name=ctx.me().name))  # type: ignore[union-attr]
            _menu(ctx)
        else:
            _greet(ctx)
    elif name in ("batdau", "menu"):
        _menu(ctx)
    elif name == "huy":
        _keep_resume(ctx)
        ctx.goto("idle")
        ctx.say(t("common.left"))
        _menu(ctx)
    elif name in ("trogiup", "help"):
        _help(ctx)
    elif name in ("trangthai", "status"):
        _status(ctx)
    elif name == "thongke":
        _stats(ctx)
    elif name == "dangky":
        _go(ctx, "register")
    elif name == "danhgia":
        me = ctx.me()
        _go(ctx, f"assess:{_default_title(ctx, me) if me else 'gia_dinh'}")
    elif name == "bosung":
        _go(ctx, "amend")
    else:
        _menu(ctx)


def _go(ctx: Ctx, what: str) -> None:
    """Actions reachable from any state: menu buttons and buttons in notifications."""
    parts = what.split(":")
    head = parts[0]
    if ctx.me() is None and head not in ("help", "menu"):
        if head == "later":
            ctx.say(t("common.later_ack"))
            ctx.reask()
        elif ctx.step not in ("idle", "choose_role") and ctx.data.get("prompt"):
            ctx.reask("signup.finish_first")  # mid-signup: an old button must not throw away what was typed
        else:
            ctx.say(t("common.need_signup"))
            _greet(ctx)
        return
    if head == "later":
        # a reminder's "Để sau", pressed whenever: nothing changes, the current question stays open
        ctx.say(t("common.later_ack"))
        if ctx.step != "idle":
            ctx.reask()
        return
    if head not in ("help", "status", "stats", "review", "invite", "resume"):
        _keep_resume(ctx)  # these only show something and come back; the others leave the current step
    if head == "menu":
        _menu(ctx)
    elif head == "help":
        _help(ctx)
    elif head == "status":
        _status(ctx)
    elif head == "register":
        _register_list(ctx)
    elif head == "assess":
        title = parts[1] if len(parts) > 1 else ""
        subject = _parse_subject(":".join(parts[2:4])) if len(parts) >= 4 else None
        if title not in TITLES:  # e.g. "go:assess:" from a reminder for someone with no title yet
            title = _default_title(ctx, ctx.me())  # type: ignore[arg-type]
            subject = None
        _start_assessment(ctx, title, subject)
    elif head == "amend":
        _amend(ctx)
    elif head == "resume":
        resume = ctx.data.get("resume")
        if resume:
            _start_assessment(ctx, resume["title"], Subject.parse(resume["subject"]),
                              proxy_by=resume.get("proxy_by"))
        else:
            _menu(ctx)
    elif head == "households":
        _households(ctx)
    elif head == "invite":
        _invite_code(ctx)
    elif head == "add_household":
        if _leader_village(ctx) is not None:
            ctx.goto("add_household_name")
            ctx.say(t("leader.add_name"), [btn("btn.back", "go:households")], ask=True)
    elif head == "clan":
        _clan_menu(ctx)
    elif head == "clan_add":
        _clan_add(ctx)
    elif head == "stats":
        _stats(ctx)
    elif head == "review":
        _review_link(ctx)
    else:
        _menu(ctx)


def _keep_resume(ctx: Ctx) -> None:
    """Leaving an open assessment: remember it, so that the menu offers "Làm tiếp" back to it."""
    a = ctx.data.get("a")
    if ctx.step in ASSESS_STEPS and isinstance(a, dict) and "subject" in a:
        ctx.data["resume"] = {k: a[k] for k in ("subject", "title", "year", "proxy_by") if k in a}


def _drop_resume(ctx: Ctx, a: dict[str, Any]) -> None:
    """The assessment ``a`` is done: "Làm tiếp" no longer points to it (but still to another one left open)."""
    resume = ctx.data.get("resume")
    if resume and (resume.get("subject"), resume.get("title")) == (a["subject"], a["title"]):
        ctx.data.pop("resume")


def _num(text: str) -> int:
    """The number at the end of a button value ("hh:12" → 12); -1 for a damaged or forged value."""
    tail = text.rsplit(":", 1)[-1]
    return int(tail) if re.fullmatch(r"[0-9]{1,12}", tail) else -1


def _parse_subject(key: str) -> Subject | None:
    kind, _, ident = key.partition(":")
    return Subject(kind, int(ident)) if re.fullmatch(r"[0-9]{1,12}", ident) else None


def _default_title(ctx: Ctx, me: PersonInfo | None) -> str:
    """The title /danhgia means for this person: the first of theirs registered this year, else their first."""
    if me is None:
        return "gia_dinh"
    pairs = _my_subjects(ctx, me)
    year = ctx.year
    for subject, title in pairs:
        if title in ctx.registrations(subject, year) and ctx.assessment(subject, title, year).status in EDITABLE:
            return title
    return pairs[0][1] if pairs else "gia_dinh"


def _amend(ctx: Ctx) -> None:
    """The "Gửi ảnh mới" button of a decision message: open the file the commune or the village sent back."""
    me = ctx.me()
    assert me is not None
    year = ctx.year
    for subject, title in _my_subjects(ctx, me):
        if ctx.assessment(subject, title, year).status in ("returned", "questioned"):
            _start_assessment(ctx, title, subject)
            return
    if me.has("village_leader") and me.village_id is not None:  # the "_for" message of a proxy entry
        for hh in ctx.view.village_households(me.village_id, year):
            if hh.status in ("returned", "questioned") and not hh.has_phone:
                _start_assessment(ctx, "gia_dinh", Subject("household", hh.id), proxy_by=me.id)
                return
    _status(ctx)


# ------------------------------------------------------------------------------------------------ start


def _role_buttons() -> list[Button]:
    return [btn(ROLE_BUTTON[r], f"role:{r}") for r in ROLES]


def _greet(ctx: Ctx, invite: dict[str, Any] | None = None) -> None:
    ctx.goto("choose_role", **(invite or {}))
    if invite:
        text = t("start.hello_village", commune=invite["commune_name"], village=invite["village_name"])
    else:
        text = t("start.hello")
    ctx.say(text, _role_buttons(), ask=True)


def _invite(ctx: Ctx, code: str) -> None:
    village = ctx.view.village_by_code(code) or ctx.view.village_by_code(f"v_{code}")
    if village is None:
        ctx.say(t("start.bad_invite", code=code))
        if ctx.me() is None:
            _greet(ctx)
        else:
            _menu(ctx)
        return
    hit = communes.commune(village.commune_code)
    invite = {"commune": village.commune_code, "commune_name": hit.name if hit else "",
              "village": village.id, "village_name": village.name}
    if ctx.me() is not None:
        ctx.say(t("start.welcome_back", name=ctx.me().name))  # type: ignore[union-attr]
        _menu(ctx)
        return
    _greet(ctx, invite)


def _step_idle(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if ctx.me() is None:
        match = INVITE.match(ev.text) if ev.kind == "text" else None
        if match:
            _invite(ctx, match.group(1))
        else:
            _greet(ctx)
        return
    if choice == "resume":
        _go(ctx, "resume")
        return
    _menu(ctx)


def _step_choose_role(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if ev.kind == "text" and INVITE.match(ev.text) and not choice:
        _invite(ctx, INVITE.match(ev.text).group(1))  # type: ignore[union-attr]
        return
    if not choice and ev.kind == "text":
        choice = _typed_role(ev.text)
    if not choice or not choice.startswith("role:") or choice[5:] not in ROLES:
        ctx.reask("common.not_understood")
        return
    ctx.data["role"] = choice[5:]
    if ctx.data.get("commune") and (ctx.data.get("village") or ctx.data["role"] in NO_VILLAGE_ROLES):
        _ask_name(ctx)
    else:
        _ask_commune(ctx)


def _typed_role(text: str) -> str | None:
    folded = f" {ans.fold(text)} "
    for role, words in ROLE_WORDS:
        if any(f" {w} " in folded for w in words):  # whole words: "truong ho" is not in "truong hoc"
            return f"role:{role}"
    return None


def _signup_data(ctx: Ctx) -> dict[str, Any]:
    return {k: ctx.data[k] for k in ("role", "commune", "commune_name", "village", "village_name",
                                     "new_village", "name", "members", "phone", "unit_name", "unit_kind",
                                     "staff") if k in ctx.data}


def _ask_commune(ctx: Ctx) -> None:
    ctx.goto("commune", **_signup_data(ctx))
    ctx.say(t("signup.ask_commune"), ask=True)


def _step_commune(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if ev.kind != "text":
        ctx.reask("signup.commune_short")
        return
    match = INVITE.match(ev.text)
    if match and ctx.view.village_by_code(match.group(1)) is not None:
        role = ctx.data.get("role")
        _invite(ctx, match.group(1))
        if role:
            ctx.data["role"] = role
        return
    query = ev.text.strip()
    if len(ans.fold(query)) < 2:
        ctx.reask("signup.commune_short")
        return
    hits = communes.search(query, served=ctx.view.served())
    if not hits:
        ctx.say(t("signup.commune_none", query=short(query, 40)))
        return
    data = _signup_data(ctx)
    ctx.goto("commune_pick", **data, hits=[h.code for h in hits])
    buttons = [Button(_place_label(h), f"commune:{h.code}") for h in hits]
    buttons.append(btn("btn.not_this", "commune:none"))
    if len(hits) == 1:
        ctx.say(t("signup.commune_one", label=hits[0].label), buttons, ask=True)
    else:
        lines = "\n".join(f"{i}. {h.label}" for i, h in enumerate(hits, 1))
        ctx.say(t("signup.commune_hits", count=len(hits), lines=lines), buttons, ask=True)


def _place_label(hit: communes.CommuneHit) -> str:
    for label in (hit.label, f"{hit.name.split(' ', 1)[-1]} – {hit.province}"):
        if len(label) <= MAX_BUTTON:
            return label
    return short(hit.name)


def _step_commune_pick(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice == "commune:none":
        _ask_commune(ctx)
        return
    if choice and choice.startswith("commune:"):
        code = _num(choice)
        hit = communes.commune(code)
        if hit is None or code not in ctx.data.get("hits", []):
            ctx.reask("common.not_understood")
            return
        ctx.data["commune"] = code
        ctx.data["commune_name"] = hit.name
        if ctx.data.get("role") in NO_VILLAGE_ROLES:
            _ask_name(ctx)
        else:
            _ask_village(ctx)
        return
    if ev.kind == "text":  # a new search typed instead of a choice
        _step_commune(ctx, ev, None)
        return
    ctx.reask("common.not_understood")


def _ask_village(ctx: Ctx) -> None:
    data = _signup_data(ctx)
    villages = ctx.view.villages(int(ctx.data["commune"]))
    if not villages:
        ctx.goto("village_new", **data)
        ctx.say(t("signup.ask_new_village"), ask=True)
        return
    ctx.goto("village_pick", **data)
    buttons = [Button(short(v.name), f"village:{v.id}") for v in villages[:12]]
    buttons.append(btn("btn.other_village", "village:new"))
    ctx.say(t("signup.ask_village", commune=ctx.data.get("commune_name", "")), buttons, ask=True)


def _step_village_pick(ctx: Ctx, ev: Event, choice: str | None) -> None:
    commune_code = int(ctx.data["commune"])
    villages = ctx.view.villages(commune_code)
    if choice == "village:new":
        ctx.goto("village_new", **_signup_data(ctx))
        ctx.say(t("signup.ask_new_village"), ask=True)
        return
    picked = None
    if choice and choice.startswith("village:"):
        picked = next((v for v in villages if str(v.id) == choice.split(":")[1]), None)
    elif ev.kind == "text":
        typed = _strip_village_word(ans.fold(ev.text))
        picked = next((v for v in villages if _strip_village_word(ans.fold(v.name)) == typed), None)
    if picked is None:
        ctx.reask("signup.village_unknown")
        return
    ctx.data["village"] = picked.id
    ctx.data["village_name"] = picked.name
    _ask_name(ctx)


def _strip_village_word(folded: str) -> str:
    for word in ("thon ", "to dan pho ", "to ", "xom ", "ap ", "ban ", "khu "):
        if folded.startswith(word):
            return folded[len(word):]
    return folded


def _step_village_new(ctx: Ctx, ev: Event, choice: str | None) -> None:
    name = " ".join(ev.text.split()) if ev.kind == "text" else ""
    if not 2 <= len(name) <= 60 or not any(ch.isalpha() for ch in name):
        ctx.reask("signup.bad_village_name")
        return
    ctx.data["new_village"] = name
    ctx.data["village_name"] = name
    _ask_name(ctx)


def _ask_name(ctx: Ctx) -> None:
    ctx.goto("name", **_signup_data(ctx))
    key = "signup.ask_head_name" if ctx.data.get("role") == "household" else "signup.ask_name"
    ctx.say(t(key), ask=True)


def _valid_name(text: str) -> str | None:
    name = " ".join(text.split())
    letters = sum(ch.isalpha() for ch in name)
    if not 2 <= len(name) <= 80 or letters < 2 or any(ch.isdigit() for ch in name):
        return None
    return name


def _step_name(ctx: Ctx, ev: Event, choice: str | None) -> None:
    name = _valid_name(ev.text) if ev.kind == "text" else None
    if name is None:
        ctx.reask("signup.bad_name")
        return
    ctx.data["name"] = name
    if ctx.data.get("role") == "household":
        ctx.goto("members", **_signup_data(ctx))
        ctx.say(t("signup.ask_members"), ask=True)
    elif ctx.data.get("role") == "unit_rep":
        ctx.goto("unit_name", **_signup_data(ctx))
        ctx.say(t("unit.ask_name"), ask=True)
    else:
        _ask_phone(ctx)


def _step_unit_name(ctx: Ctx, ev: Event, choice: str | None) -> None:
    name = " ".join(ev.text.split()) if ev.kind == "text" else ""
    if not 3 <= len(name) <= 120 or sum(ch.isalpha() for ch in name) < 2:
        ctx.reask("unit.bad_name")
        return
    ctx.data["unit_name"] = name
    ctx.goto("unit_kind", **_signup_data(ctx))
    ctx.say(t("unit.ask_kind", unit=short(name, 60)),
            [btn(f"btn.unit_{kind}", f"kind:{kind}") for kind in UNIT_KINDS], ask=True)


def _step_unit_kind(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice is None and ev.kind == "text":
        folded = f" {ans.fold(ev.text)} "
        kind = next((k for k, words in UNIT_KIND_WORDS.items() if any(f" {w} " in folded for w in words)), None)
        choice = f"kind:{kind}" if kind else None
    if not choice or not choice.startswith("kind:") or choice[5:] not in UNIT_KINDS:
        ctx.reask("common.not_understood")
        return
    ctx.data["unit_kind"] = choice[5:]
    ctx.goto("unit_staff", **_signup_data(ctx))
    ctx.say(t("unit.ask_staff"), ask=True)


def _step_unit_staff(ctx: Ctx, ev: Event, choice: str | None) -> None:
    value = ans.parse_int(ev.text) if ev.kind == "text" else None
    if value is None or not 1 <= value <= 100000:
        ctx.reask("unit.bad_staff")
        return
    ctx.data["staff"] = value
    _ask_phone(ctx)


def _step_members(ctx: Ctx, ev: Event, choice: str | None) -> None:
    value = ans.parse_int(ev.text) if ev.kind == "text" else None
    if value is None or not 1 <= value <= 50:
        ctx.reask("signup.bad_members")
        return
    ctx.data["members"] = value
    _ask_phone(ctx)


def _ask_phone(ctx: Ctx) -> None:
    ctx.goto("phone", **_signup_data(ctx))
    ctx.say(t("signup.ask_phone"), [btn("btn.skip", "skip")], ask=True, request_contact=True)


def _step_phone(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice == "skip":
        phone = None
    else:
        phone = ans.normalize_phone(ev.text) if ev.kind in ("text", "contact") else None
        if phone is None:
            ctx.reask("signup.bad_phone")
            return
    ctx.data["phone"] = phone
    ctx.goto("consent", **_signup_data(ctx))
    ctx.say(t("signup.consent"), [btn("btn.agree", "yes"), btn("btn.disagree", "no")], ask=True)


def _step_consent(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice is None and ev.kind == "text":
        yn = ans.parse_yes_no(ev.text)
        choice = {True: "yes", False: "no"}.get(yn) if isinstance(yn, bool) else None
    if choice == "no":
        # Decree 13/2023: without consent nothing is kept, not even what was typed so far
        ctx.goto("idle")
        ctx.data.pop("resume", None)
        ctx.say(t("signup.no_consent"))
        return
    if choice != "yes":
        ctx.reask("common.not_understood")
        return
    d = ctx.data
    role, commune_code = d["role"], int(d["commune"])
    village_id = d.get("village")
    if d.get("new_village") and not village_id:
        ctx.emit(ProposeVillage(commune_code, d["new_village"]))
    ctx.emit(RegisterPerson(d["name"], role, commune_code, village_id, d.get("phone"), ctx.now))
    year = ctx.year
    if role == "household":
        ctx.emit(GrantRole("household", commune_code, village_id))
        ctx.emit(CreateHousehold(d["name"], int(d.get("members") or 1), d.get("phone"), commune_code, village_id))
        ctx.goto("reg_offer")
        ctx.say(t("signup.saved_household", name=d["name"]))
        if d.get("new_village"):
            ctx.say(t("signup.village_pending", village=d["new_village"]))
        ctx.say(t("signup.offer_register", year=year),
                [btn("btn.register", "yes"), btn("btn.later", "later")], ask=True)
    elif role == "unit_rep":
        ctx.emit(GrantRole("unit_rep", commune_code, None))
        ctx.emit(CreateUnit(d["unit_name"], d.get("unit_kind") or "agency", int(d.get("staff") or 1), commune_code))
        ctx.goto("reg_offer", title="don_vi")
        ctx.say(t("signup.saved_unit", unit=short(d["unit_name"], 80)))
        ctx.say(t("signup.offer_register_unit", year=year),
                [btn("btn.register", "yes"), btn("btn.later", "later")], ask=True)
    elif role == "clan_head":
        ctx.emit(GrantRole("clan_head", commune_code, village_id))
        ctx.goto("clan_name")
        ctx.say(t("signup.saved_clan", name=d["name"]))
        ctx.say(t("clan.ask_name"), ask=True)
    else:
        ctx.emit(RequestRole(role, commune_code, None if role == "officer" else village_id))
        ctx.goto("idle")
        ctx.say(t("signup.saved_pending", role=t(f"role.{role}")))


def _step_reg_offer(ctx: Ctx, ev: Event, choice: str | None) -> None:
    me = ctx.me()
    if choice is None and ev.kind == "text":
        yn = ans.parse_yes_no(ev.text)
        choice = {True: "yes", False: "later"}.get(yn) if isinstance(yn, bool) else None
    title = ctx.data.get("title", "gia_dinh")
    subject = _own_subject(ctx, me, title) if me is not None else None
    if choice == "later" or subject is None:
        ctx.goto("idle")
        _menu(ctx)
        return
    if choice != "yes":
        ctx.reask("common.not_understood")
        return
    _do_register(ctx, subject, title)


# ------------------------------------------------------------------------------------------------ menu, help


def _menu_buttons(me: PersonInfo, ctx: Ctx) -> list[Button]:
    buttons: list[Button] = []
    if ctx.data.get("resume"):
        buttons.append(btn("btn.continue", "go:resume"))
    household = me.has("household") and me.household_id is not None
    unit = me.has("unit_rep") and me.unit_id is not None
    if household or unit:
        buttons.append(btn("btn.register_menu", "go:register"))
    if household:
        buttons.append(btn("btn.assess", f"go:assess:gia_dinh:household:{me.household_id}"))
    if unit:
        buttons.append(btn("btn.unit_assess", f"go:assess:don_vi:unit:{me.unit_id}"))
    citizen = btn("btn.assess_citizen", f"go:assess:cong_dan:person:{me.id}")
    if household:
        buttons.append(citizen)
    if me.has("clan_head"):
        buttons.append(btn("btn.clan", "go:clan"))
    if me.has("village_leader"):
        buttons.append(btn("btn.households", "go:households"))
        buttons.append(btn("btn.village_assess", "go:assess:cong_dong"))
        buttons.append(btn("btn.invite", "go:invite"))
    if me.has("officer"):
        buttons.append(btn("btn.stats", "go:stats"))
        buttons.append(btn("btn.review", "go:review"))
    if not household:  # every adult may answer "Công dân học tập" for themself (DESIGN.md §2)
        buttons.append(citizen)
    buttons.append(btn("btn.status", "go:status"))
    buttons.append(btn("btn.help", "go:help"))
    return buttons


def _menu(ctx: Ctx) -> None:
    me = ctx.me()
    if me is None:
        _greet(ctx)
        return
    resume = ctx.data.get("resume")
    ctx.goto("idle")
    if resume:
        ctx.data["resume"] = resume
    for role in PENDING_ROLES:
        if me.pending(role) and not me.has(role):
            ctx.say(t("menu.pending", role=t(f"role.{role}")))
    ctx.say(t("menu.ask"), _menu_buttons(me, ctx), ask=True)


def _help(ctx: Ctx) -> None:
    me = ctx.me()
    lines = [t("help.base")]
    if me is None:
        lines.append(t("help.new"))
    else:
        lines += [t(f"help.{role}") for role in ROLES if me.has(role)]
    _say_lines(ctx, lines)  # several roles: several short messages rather than one long one
    ctx.reask()


def _status(ctx: Ctx) -> None:
    me = ctx.me()
    if me is None:
        ctx.say(t("common.need_signup"))
        return
    lines = []
    if ctx.step != "idle" and f"step.{ctx.step}" in _catalog_keys():
        lines.append(t("status.where", where=t(f"step.{ctx.step}")))
    else:
        lines.append(t("status.idle"))
    year = ctx.year
    any_reg = False
    notes: list[str] = []
    for subject, title in _my_subjects(ctx, me):
        info = ctx.assessment(subject, title, year)
        answers = ctx.answers(subject, title, year)
        # a file sent or begun without a registration (entered on the web, an old year's data) still shows
        if title not in ctx.registrations(subject, year) and info.status == "draft" and not answers:
            continue
        any_reg = True
        cset = ctx.view.criteria(title)
        askable = _askable(cset)
        answered = sum(1 for c in askable if c.id in answers)
        state = t(f"status.{info.status}") if info.status != "draft" or answered else t("status.none")
        parts = [state]
        if info.status in ("draft", "returned", "questioned"):
            parts.append(t("status.progress", answered=answered, total=len(askable)))
        missing = _missing_photos(ctx, cset, subject, title, year, answers)
        if missing:
            parts.append(t("status.missing_photos", count=len(missing)))
        lines.append(t("status.line", title=t(f"title.{title}"), year=year, state=", ".join(parts)))
        if info.status == "questioned" and info.leader_note:
            notes.append(t("status.leader_note", title=t(f"title.{title}"), note=short(info.leader_note, 160)))
        elif info.status == "returned" and info.note:
            notes.append(t("status.returned_note", title=t(f"title.{title}"), note=short(info.note, 160)))
    if not any_reg:
        lines.append(t("status.not_registered", year=year))
    for role in PENDING_ROLES:
        if me.pending(role) and not me.has(role):
            lines.append(t("menu.pending", role=t(f"role.{role}")))
    _say_lines(ctx, lines)
    for note in notes:  # each on its own: a note can be long, and it is what the person must act on
        ctx.say(note)
    ctx.reask()


def _say_lines(ctx: Ctx, lines: list[str], limit: int = 300) -> None:
    """Lines as few messages as possible, none longer than ``limit`` (a phone screen, VOICE.md)."""
    chunk: list[str] = []
    for line in lines:
        if chunk and len("\n".join([*chunk, line])) > limit:
            ctx.say("\n".join(chunk))
            chunk = []
        chunk.append(line)
    if chunk:
        ctx.say("\n".join(chunk))


def _catalog_keys() -> set[str]:
    return set(catalog())


# ------------------------------------------------------------------------------------------------ registration


def _my_subjects(ctx: Ctx, me: PersonInfo) -> list[tuple[Subject, str]]:
    """(subject, title) pairs this person may register and answer for themself."""
    pairs: list[tuple[Subject, str]] = []
    if me.has("household") and me.household_id is not None:
        pairs.append((Subject("household", me.household_id), "gia_dinh"))
    if me.has("clan_head") and me.clan_id is not None:
        pairs.append((Subject("clan", me.clan_id), "dong_ho"))
    if me.has("village_leader") and me.village_id is not None:
        pairs.append((Subject("village", me.village_id), "cong_dong"))
    if me.has("unit_rep") and me.unit_id is not None:
        pairs.append((Subject("unit", me.unit_id), "don_vi"))
    pairs.append((Subject("person", me.id), "cong_dan"))  # every adult, for themself
    return pairs


def _deadline(ctx: Ctx, me: PersonInfo, year: int) -> Any:
    return ctx.view.registration_deadline(me.commune_code or 0, year)


def _register_list(ctx: Ctx) -> None:
    me = ctx.me()
    assert me is not None
    pairs = _my_subjects(ctx, me)
    if not pairs:
        ctx.say(t("register.none_available"))
        _menu(ctx)
        return
    year = ctx.year
    deadline = _deadline(ctx, me, year)
    done = [title for subject, title in pairs if title in ctx.registrations(subject, year)]
    if done and ctx.now.date() <= deadline:
        ctx.say(t("register.list", year=year, registered=", ".join(t(f"title.{x}") for x in done),
                  deadline=_date(deadline)))
    elif done:  # past the deadline: no promise of a cancellation that is no longer possible
        ctx.say(t("register.list_closed", year=year, registered=", ".join(t(f"title.{x}") for x in done)))
    else:
        ctx.say(t("register.list_none", year=year))
    buttons = []
    for subject, title in pairs:
        if title in done:
            if ctx.now.date() <= deadline:
                label = short(t("register.cancel_prefix", title=t(f"title.{title}")))
                buttons.append(Button(label, f"unreg:{title}:{subject.key()}"))
        else:
            buttons.append(Button(short(t(f"title.{title}")), f"reg:{title}:{subject.key()}"))
    buttons.append(btn("btn.done", "go:menu"))
    ctx.goto("register")
    ctx.say(t("register.ask"), buttons, ask=True)


def _step_register(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if not choice or ":" not in choice:
        ctx.reask("common.not_understood")
        return
    action, _, rest = choice.partition(":")
    title, _, subject_key = rest.partition(":")
    me = ctx.me()
    subject = _parse_subject(subject_key)
    if me is None or subject is None or (subject, title) not in _my_subjects(ctx, me):
        ctx.reask("common.not_understood")
        return
    year = ctx.year
    back = btn("btn.back", "back")
    if action == "reg":
        ctx.goto("register_confirm", title=title, subject=subject_key)
        ctx.say(t("register.confirm", title=t(f"title.{title}"), year=year),
                [btn("btn.register", "yes"), back], ask=True)
    elif action == "unreg":
        deadline = _deadline(ctx, me, year)
        if ctx.now.date() > deadline:
            ctx.say(t("register.too_late", deadline=_date(deadline)))
            _menu(ctx)
            return
        ctx.goto("cancel_confirm", title=title, subject=subject_key)
        ctx.say(t("register.cancel_confirm", title=t(f"title.{title}"), year=year),
                [btn("btn.cancel_registration", "yes"), back], ask=True)
    else:
        ctx.reask("common.not_understood")


def _step_register_confirm(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice is None and ev.kind == "text" and ans.parse_yes_no(ev.text) is True:
        choice = "yes"
    if choice == "back" or (choice is None and ev.kind == "text" and ans.parse_yes_no(ev.text) is False):
        _register_list(ctx)
        return
    if choice != "yes":
        ctx.reask("common.not_understood")
        return
    _do_register(ctx, Subject.parse(ctx.data["subject"]), ctx.data["title"])


def _do_register(ctx: Ctx, subject: Subject, title: str) -> None:
    me = ctx.me()
    assert me is not None
    year = ctx.year
    if title not in ctx.registrations(subject, year):
        ctx.register(subject, title, year)
    ctx.say(t("register.done", title=t(f"title.{title}"), year=year, deadline=_date(_deadline(ctx, me, year))))
    ctx.goto("idle")
    ctx.say(t("register.next"), [btn("btn.assess", f"go:assess:{title}:{subject.key()}"),
                                 btn("btn.register_menu", "go:register"), btn("btn.later", "go:menu")], ask=True)


def _step_cancel_confirm(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice is None and ev.kind == "text":
        yn = ans.parse_yes_no(ev.text)
        choice = "yes" if yn is True else ("back" if yn is False else None)
    if choice == "back":
        _register_list(ctx)
        return
    if choice != "yes":
        ctx.reask("common.not_understood")
        return
    subject, title, year = Subject.parse(ctx.data["subject"]), ctx.data["title"], ctx.year
    ctx.emit(CancelRegistration(subject, title, year))
    ctx.unregistered.add((subject.key(), title, year))
    ctx.registered.discard((subject.key(), title, year))
    ctx.say(t("register.cancelled", title=t(f"title.{title}"), year=year))
    _register_list(ctx)


# ------------------------------------------------------------------------------------------------ assessment


def _askable(cset: CriteriaSet) -> list[Criterion]:
    return [c for c in cset.criteria if not c.computed]


def _own_subject(ctx: Ctx, me: PersonInfo, title: str) -> Subject | None:
    for subject, tt in _my_subjects(ctx, me):
        if tt == title:
            return subject
    return None


def _may_answer(ctx: Ctx, me: PersonInfo, subject: Subject, title: str, proxy_by: int | None) -> bool:
    if (subject, title) in _my_subjects(ctx, me):
        return True
    if proxy_by is not None and subject.kind == "household" and title == "gia_dinh" and me.has("village_leader"):
        hh = ctx.view.household(subject.id, ctx.year)
        return hh is not None and hh.village_id == me.village_id and not hh.has_phone
    return False


def _start_assessment(ctx: Ctx, title: str, subject: Subject | None, *, proxy_by: int | None = None) -> None:
    me = ctx.me()
    assert me is not None
    if subject is None:
        subject = _own_subject(ctx, me, title)
    if subject is None or not _may_answer(ctx, me, subject, title, proxy_by):
        if title == "dong_ho" and me.has("clan_head"):
            ctx.say(t("clan.need_clan"))
        elif title == "cong_dong" and not me.has("village_leader"):
            ctx.say(t("common.not_allowed", role=t("role.village_leader")))
        else:
            ctx.say(t("assess.no_subject", title=t(f"title.{title}")))
        _menu(ctx)
        return
    year = ctx.year
    cset = ctx.view.criteria(title)
    info = ctx.assessment(subject, title, year)
    if info.status not in EDITABLE:
        ctx.say(t("assess.locked", title=t(f"title.{title}"), year=year, state=t(f"status.{info.status}")))
        _menu(ctx)
        return
    a = {"subject": subject.key(), "title": title, "year": year, "i": 0, "mode": "flow", "skipped": []}
    if proxy_by is not None:
        a["proxy_by"] = proxy_by
    if title not in ctx.registrations(subject, year):
        ctx.register(subject, title, year)
        if proxy_by is None:
            ctx.say(t("assess.auto_registered", title=t(f"title.{title}"), year=year))
    askable = _askable(cset)
    answers = ctx.answers(subject, title, year)
    if info.status != "draft" or all(c.id in answers for c in askable):
        _summary(ctx, a)
        return
    first = next(i for i, c in enumerate(askable) if c.id not in answers)
    a["i"] = first
    if proxy_by is not None:
        hh = ctx.view.household(subject.id, year)
        ctx.say(t("assess.intro_proxy", name=hh.head_name if hh else "", count=len(askable)))
    elif not answers:
        ctx.say(t("assess.intro", title=t(f"title.{title}"), year=year, count=len(askable),
                  minutes=max(1, math.ceil(len(askable) / 2))))
    else:
        ctx.say(t("assess.resume", n=first + 1, count=len(askable)))
    _ask_question(ctx, a)


_BAN = re.compile(r"\b[Bb]ạn\b(?! bè)")


def _plain(question: str) -> str:
    """A criteria file's question as the bot says it: Anh/Chị, never "bạn" (VOICE.md; cong_dan.yaml uses it)."""
    return _BAN.sub("Anh/Chị", question)


def _share_buttons(c: Criterion) -> list[Button]:
    mins = [int(tier.min) for tier in c.tiers if tier.points > 0]
    buttons: list[Button] = []
    upper = 100
    for idx, low in enumerate(mins):
        if idx == 0:
            label = t("btn.share_top", pct=100) if low == 100 else t("btn.share_from", pct=low)
        else:
            label = t("btn.share_range", low=low, high=upper - 1)
        buttons.append(Button(short(label), f"pct:{low}"))
        upper = low
    if upper > 0:
        buttons.append(Button(short(t("btn.share_below", pct=upper)), "pct:0"))
    return buttons


def _answer_buttons(c: Criterion) -> list[Button]:
    if c.answer == "yes_no":
        buttons = [btn("btn.yes", "yes"), btn("btn.no", "no")]
    elif c.answer == "choice":
        buttons = [Button(short(o.label), f"opt:{o.value}") for o in c.options]
    elif c.answer == "share":
        buttons = _share_buttons(c)
    else:
        buttons = []
    if c.not_applicable == "full":
        buttons.append(btn("btn.na", "na"))
    return buttons


def _value_label(c: Criterion, value: Any) -> str:
    if value == "na":
        return t("answer.na")
    if c.answer == "yes_no":
        return t("answer.yes" if value else "answer.no")
    if c.answer == "choice":
        return next((o.label for o in c.options if o.value == value), str(value))
    if c.answer == "share":
        return t("answer.pct", pct=_fmt(float(value)))
    return _fmt(value) if isinstance(value, int | float) else str(value)


def _ask_question(ctx: Ctx, a: dict[str, Any]) -> None:
    cset = ctx.view.criteria(a["title"])
    askable = _askable(cset)
    i = a["i"]
    c = askable[i]
    ctx.goto("assess", a=a)
    text = t("assess.question", n=i + 1, count=len(askable), question=_plain(c.question))
    extra = []
    if c.answer == "choice" and any(len(o.label) > MAX_BUTTON for o in c.options):
        extra.append("\n".join(f"{n}. {o.label}" for n, o in enumerate(c.options, 1)))
    if c.answer == "share":
        unit = ctx.view.unit(int(a["subject"].split(":")[1])) if a["subject"].startswith("unit:") else None
        if unit is not None and unit.staff > 1:  # a unit knows its head count better than a percentage
            example = max(1, round(unit.staff * 0.7))
            extra.append(t("assess.hint_share_unit", part=_fmt(example), staff=_fmt(unit.staff)))
        else:
            extra.append(t("assess.hint_share"))
    if c.answer == "number":
        extra.append(t("assess.hint_number"))
    current = ctx.answers(Subject.parse(a["subject"]), a["title"], a["year"]).get(c.id)
    if current is not None:
        extra.append(t("assess.current", value=_value_label(c, current)))
    if extra:
        text = text + "\n" + "\n".join(extra)
    buttons = _answer_buttons(c)
    if i > 0:
        buttons.append(btn("btn.back", "back"))
    buttons.append(btn("btn.skip", "skip"))
    buttons.append(btn("btn.later", "later"))
    ctx.say(text, buttons, ask=True)


def _parse_answer(c: Criterion, ev: Event, choice: str | None) -> tuple[Any, str | None, dict[str, Any]]:
    """(value, error key, error values); value None with an error key when the input is not an answer."""
    if choice == "na" or (ev.kind == "text" and ans.parse_yes_no(ev.text) == "na"):
        if c.not_applicable == "full":
            return "na", None, {}
        return None, "assess.bad_na" if c.answer == "yes_no" else "assess.bad_choice", {}
    if c.answer == "yes_no":
        if choice in ("yes", "no"):
            return choice == "yes", None, {}
        yn = ans.parse_yes_no(ev.text) if ev.kind == "text" else None
        if isinstance(yn, bool):
            return yn, None, {}
        return None, "assess.bad_yes_no", {}
    if c.answer == "choice":
        if choice and choice.startswith("opt:"):
            value = choice[4:]
            if any(o.value == value for o in c.options):
                return value, None, {}
        if ev.kind == "text":
            f = ans.fold(ev.text)
            for o in c.options:
                if f in (ans.fold(o.label), ans.fold(o.value)):
                    return o.value, None, {}
        return None, "assess.bad_choice", {}
    if c.answer == "share":
        if choice and choice.startswith("pct:") and 0 <= _num(choice) <= 100:
            return _num(choice), None, {}
        value = ans.parse_percent(ev.text) if ev.kind == "text" else None
        if value is None:
            return None, "assess.bad_share", {}
        return (int(value) if float(value).is_integer() else value), None, {}
    # number
    low, high = int(c.min or 0), int(c.max or 0)
    number = ans.parse_int(ev.text) if ev.kind == "text" else None
    if number is None or not low <= number <= high:
        return None, "assess.bad_number", {"min": _fmt(low), "max": _fmt(high)}
    return number, None, {}


def _earns(c: Criterion, value: Any) -> bool:
    return score_criterion(c, value).points > 0 and value != "na"


def _step_assess(ctx: Ctx, ev: Event, choice: str | None) -> None:
    a = ctx.data["a"]
    cset = ctx.view.criteria(a["title"])
    askable = _askable(cset)
    c = askable[a["i"]]
    if c.answer in ("number", "share") and ev.kind == "text" and re.match(r"^\d", ans.fold(ev.text)):
        choice = None  # digits typed on a number or share question are the value, not a button's index
    if choice == "later":
        _later(ctx, a)
        return
    if choice == "back":
        if a["i"] == 0:
            ctx.say(t("assess.first"))
            _ask_question(ctx, a)
            return
        a["i"] -= 1
        a["mode"] = "flow"
        _ask_question(ctx, a)
        return
    if choice == "skip":
        if c.id not in a["skipped"]:
            a["skipped"].append(c.id)
        _advance(ctx, a)
        return
    value, error, kw = _parse_answer(c, ev, choice)
    if error:
        ctx.reask(error, **kw)
        return
    ctx.save_answer(a, c.id, value)
    if c.id in a["skipped"]:
        a["skipped"].remove(c.id)
    if c.evidence != "none" and _earns(c, value):
        _ask_evidence(ctx, a, c.id)
        return
    _advance(ctx, a)


def _advance(ctx: Ctx, a: dict[str, Any]) -> None:
    if a.get("mode") == "edit":
        _summary(ctx, a)
        return
    askable = _askable(ctx.view.criteria(a["title"]))
    answers = ctx.answers(Subject.parse(a["subject"]), a["title"], a["year"])
    for j in range(a["i"] + 1, len(askable)):
        if askable[j].id not in answers and askable[j].id not in a["skipped"]:
            a["i"] = j
            _ask_question(ctx, a)
            return
    _summary(ctx, a)


def _later(ctx: Ctx, a: dict[str, Any]) -> None:
    askable = _askable(ctx.view.criteria(a["title"]))
    answers = ctx.answers(Subject.parse(a["subject"]), a["title"], a["year"])
    answered = sum(1 for c in askable if c.id in answers)
    resume = {k: a[k] for k in ("subject", "title", "year", "proxy_by") if k in a}
    ctx.goto("idle")
    ctx.data["resume"] = resume
    ctx.say(t("assess.later", answered=answered, count=len(askable)),
            [btn("btn.continue", "go:resume"), btn("btn.done", "go:menu")], ask=True)


def _ask_evidence(ctx: Ctx, a: dict[str, Any], cid: str) -> None:
    c = ctx.view.criteria(a["title"]).get(cid)
    ctx.goto("evidence", a=a, cid=cid, count=0)
    if c.evidence == "required":
        ctx.say(t("evidence.ask_required"), [btn("btn.skip", "skip")], ask=True)
    else:
        ctx.say(t("evidence.ask_optional"), [btn("btn.skip", "skip")], ask=True)


def _step_evidence(ctx: Ctx, ev: Event, choice: str | None) -> None:
    a, cid = ctx.data["a"], ctx.data["cid"]
    if ev.kind == "photo" and ev.photo is not None:
        ctx.attach(a["subject"], a["title"], a["year"], cid, _photo_json(ev))
        ctx.data["count"] = int(ctx.data.get("count", 0)) + 1
        ctx.say(t("evidence.got", count=ctx.data["count"]), [btn("btn.done", "done")], ask=True)
        return
    if choice is None and ev.kind == "text" and ans.fold(ev.text) in DONE_WORDS:
        choice = "done"
    if choice in ("done", "skip"):
        c = ctx.view.criteria(a["title"]).get(cid)
        if c.evidence == "required" and ctx.evidence(Subject.parse(a["subject"]), a["title"], a["year"]).get(cid, 0) == 0:
            askable = _askable(ctx.view.criteria(a["title"]))
            n = next(i for i, x in enumerate(askable) if x.id == cid) + 1
            ctx.say(t("evidence.later_required", n=n))
        _advance(ctx, a)
        return
    if choice == "later":
        _later(ctx, a)
        return
    ctx.reask("evidence.waiting")


def _photo_json(ev: Event) -> dict[str, Any]:
    p = ev.photo
    assert p is not None
    return {"sha256": p.sha256, "width": p.width, "height": p.height, "taken_at": p.taken_at}


def _missing_photos(ctx: Ctx, cset: CriteriaSet, subject: Subject, title: str, year: int,
                    answers: dict[str, Any]) -> list[int]:
    """Question numbers whose answer needs a photo that has not been sent."""
    photos = ctx.evidence(subject, title, year)
    missing = []
    for n, c in enumerate(_askable(cset), 1):
        if c.evidence == "required" and c.id in answers and _earns(c, answers[c.id]) and not photos.get(c.id):
            missing.append(n)
    return missing


def _questions(ns: list[int]) -> str:
    return ", ".join(t("btn.question", n=n) for n in ns)


def _score(ctx: Ctx, a: dict[str, Any]) -> tuple[CriteriaSet, dict[str, Any], ScoreResult]:
    subject = Subject.parse(a["subject"])
    cset = ctx.view.criteria(a["title"])
    answers = ctx.answers(subject, a["title"], a["year"])
    computed = ctx.view.computed(subject, a["title"], a["year"])
    return cset, answers, score(cset, answers, computed)


def _summary(ctx: Ctx, a: dict[str, Any]) -> None:
    subject = Subject.parse(a["subject"])
    cset, answers, result = _score(ctx, a)
    askable = _askable(cset)
    info = ctx.assessment(subject, a["title"], a["year"])
    a["mode"] = "flow"
    ctx.goto("summary", a=a)
    need = _fmt(cset.pass_rule.min_points)
    answered = sum(1 for c in askable if c.id in answers)
    if info.status == "returned" and info.note:
        ctx.say(t("assess.summary_returned", note=short(info.note, 200)))
    elif info.status == "questioned" and info.leader_note:
        ctx.say(t("assess.summary_questioned", note=short(info.leader_note, 200)))
    lines = []
    if info.status in ("submitted", "confirmed"):
        lines.append(t("assess.summary_sent", title=t(f"title.{a['title']}"), state=t(f"status.{info.status}"),
                       total=_fmt(result.total), max=_fmt(result.max), need=need))
    else:
        lines.append(t("assess.summary", answered=answered, count=len(askable), total=_fmt(result.total),
                       max=_fmt(result.max), need=need))
    for c in cset.criteria:
        if c.computed:
            item = result.get(c.id)
            if item.state != "missing":
                value = ctx.view.computed(subject, a["title"], a["year"]).get(c.computed)
                shown = t("answer.na") if value == "na" else t("assess.computed_value", pct=_fmt(float(value)))
                lines.append(t("assess.summary_computed", which=short(c.group, 60), value=shown))
    unanswered = [n for n, c in enumerate(askable, 1) if c.id not in answers]
    if unanswered:
        lines.append(t("assess.summary_unanswered", count=len(unanswered), which=_questions(unanswered)))
    missing = _missing_photos(ctx, cset, subject, a["title"], a["year"], answers)
    buttons: list[Button] = []
    if missing:
        lines.append(t("assess.summary_missing_photo", which=_questions(missing)))
        buttons.append(btn("btn.send_photo", f"photo:{missing[0]}"))
        ask = t("assess.summary_ask_photo")
    else:
        buttons.append(btn("btn.submit", "submit"))
        ask = t("assess.summary_ask")
    if unanswered:
        buttons.append(btn("btn.answer_rest", "continue"))
    buttons.append(btn("btn.edit", "edit"))
    buttons.append(btn("btn.later", "later"))
    ctx.say("\n".join(lines))
    ctx.say(ask, buttons, ask=True)


def _step_summary(ctx: Ctx, ev: Event, choice: str | None) -> None:
    a = ctx.data["a"]
    subject = Subject.parse(a["subject"])
    cset = ctx.view.criteria(a["title"])
    askable = _askable(cset)
    if ev.kind == "text" and ans.fold(ev.text) in ("gui", "nop", "gui di", "gui luon"):
        choice = "submit"
    if choice == "later":
        _later(ctx, a)
    elif choice == "edit":
        ctx.goto("edit_pick", a=a)
        buttons = [Button(t("btn.question", n=n), f"q:{n}") for n in range(1, len(askable) + 1)]
        buttons.append(btn("btn.back", "back"))
        ctx.say(t("assess.edit_ask"), buttons, ask=True)
    elif choice == "continue":
        answers = ctx.answers(subject, a["title"], a["year"])
        first = next((i for i, c in enumerate(askable) if c.id not in answers), None)
        if first is None:
            _summary(ctx, a)
            return
        a["i"], a["mode"], a["skipped"] = first, "flow", []
        _ask_question(ctx, a)
    elif choice and choice.startswith("photo:"):
        n = _num(choice)
        if not 1 <= n <= len(askable):
            ctx.reask("common.not_understood")
            return
        a["mode"] = "edit"
        a["i"] = n - 1
        _ask_evidence(ctx, a, askable[n - 1].id)
    elif choice == "submit":
        _submit(ctx, a)
    else:
        ctx.reask("common.not_understood")


def _step_edit_pick(ctx: Ctx, ev: Event, choice: str | None) -> None:
    a = ctx.data["a"]
    count = len(_askable(ctx.view.criteria(a["title"])))
    if ev.kind == "text" and ans.parse_int(ev.text) is not None:
        choice = None  # a typed number is the question's number, not a button's index
    if choice == "back":
        _summary(ctx, a)
        return
    n = None
    if choice and choice.startswith("q:"):
        n = _num(choice)
    elif ev.kind == "text":
        n = ans.parse_int(ev.text)
    if n is None or not 1 <= n <= count:
        ctx.reask("assess.bad_edit", count=count)
        return
    a["i"], a["mode"] = n - 1, "edit"
    _ask_question(ctx, a)


def _submit(ctx: Ctx, a: dict[str, Any]) -> None:
    subject = Subject.parse(a["subject"])
    cset, answers, result = _score(ctx, a)
    info = ctx.assessment(subject, a["title"], a["year"])
    if info.status not in EDITABLE:
        ctx.say(t("assess.locked", title=t(f"title.{a['title']}"), year=a["year"], state=t(f"status.{info.status}")))
        _menu(ctx)
        return
    missing = _missing_photos(ctx, cset, subject, a["title"], a["year"], answers)
    if missing:
        ctx.say(t("assess.cannot_submit_photo", which=_questions(missing)))
        _summary(ctx, a)
        return
    ctx.emit(SubmitAssessment(subject, a["title"], a["year"], result.total, result.max, result.passed,
                              a.get("proxy_by")))
    need = _fmt(cset.pass_rule.min_points)
    if a.get("proxy_by") is not None:
        hh = ctx.view.household(subject.id, a["year"])
        ctx.say(t("assess.submitted_proxy", name=hh.head_name if hh else "", total=_fmt(result.total),
                  max=_fmt(result.max), need=need))
        _drop_resume(ctx, a)
        _households(ctx)
        return
    ctx.say(t("assess.submitted", total=_fmt(result.total), max=_fmt(result.max), need=need))
    askable = _askable(cset)
    not_met = [n for n, c in enumerate(askable, 1) if not result.get(c.id).met]
    _drop_resume(ctx, a)
    ctx.goto("idle")
    if not_met:
        ctx.say(t("assess.not_met", which=_questions(not_met)))
    _menu(ctx)


# ------------------------------------------------------------------------------------------------ photos


def _photo_anywhere(ctx: Ctx, ev: Event) -> None:
    me = ctx.me()
    if me is None or ev.photo is None:
        ctx.say(t("common.need_signup"))
        if me is None:
            _greet(ctx)
        return
    year = ctx.year
    if ctx.step == "photo_where":  # an album: several photos in a row
        ctx.data["photos"].append(_photo_json(ev))
        return
    options: list[tuple[str, str, int, str]] = []  # subject key, title, question number, criterion id
    pairs = list(_my_subjects(ctx, me))
    a = ctx.data.get("a")
    if a and (Subject.parse(a["subject"]), a["title"]) not in pairs:
        pairs.insert(0, (Subject.parse(a["subject"]), a["title"]))  # proxy entry in progress
    for subject, title in pairs:
        if title not in ctx.registrations(subject, year):
            continue
        if ctx.assessment(subject, title, year).status not in EDITABLE:
            continue
        for n, c in enumerate(_askable(ctx.view.criteria(title)), 1):
            if c.evidence != "none":
                options.append((subject.key(), title, n, c.id))
    if not options:
        ctx.say(t("photo.none_needed"))
        return
    if a and ctx.step in ASSESS_STEPS:  # in the middle of one assessment, the photo is for that one
        options = [o for o in options if (o[0], o[1]) == (a["subject"], a["title"])] or options
    back = {"step": ctx.step, "data": ctx.data}
    ctx.goto("photo_where", photos=[_photo_json(ev)], options=[list(o) for o in options], back=back)
    several = len({(o[0], o[1]) for o in options}) > 1
    lines: list[str] = []
    buttons: list[Button] = []
    room = 300 - len(t("photo.ask_where", lines=""))  # the question must fit on one screen (VOICE.md)
    for idx, (_, title, n, cid) in enumerate(options):
        c = ctx.view.criteria(title).get(cid)
        label = t("btn.question", n=n) if not several else short(f"{t(f'title.{title}')[:8].strip()} {n}")
        line = f"{label}: {short(_plain(c.question), 40)}"
        if len("\n".join([*lines, line])) <= room:
            lines.append(line)
        buttons.append(Button(label, f"attach:{idx}"))
    buttons.append(btn("btn.drop_photo", "drop"))
    ctx.say(t("photo.ask_where", lines="\n".join(lines)), buttons, ask=True)


def _restore(ctx: Ctx) -> None:
    back = ctx.data.get("back") or {"step": "idle", "data": {}}
    ctx.step, ctx.data = back["step"], back["data"]
    if ctx.step == "idle" and not ctx.data.get("prompt"):
        _menu(ctx)
    else:
        ctx.reask()


def _step_photo_where(ctx: Ctx, ev: Event, choice: str | None) -> None:
    options = ctx.data.get("options", [])
    if choice == "drop":
        ctx.say(t("photo.dropped"))
        _restore(ctx)
        return
    idx = None
    if choice and choice.startswith("attach:"):
        idx = _num(choice)
    elif ev.kind == "text":
        n = ans.parse_int(ev.text)
        idx = next((i for i, o in enumerate(options) if o[2] == n), None) if n is not None else None
    if idx is None or not 0 <= idx < len(options):
        ctx.reask("common.not_understood")
        return
    subject_key, title, n, cid = options[idx]
    year = ctx.year
    if ctx.assessment(Subject.parse(subject_key), title, year).status not in EDITABLE:
        ctx.say(t("photo.locked"))
        _restore(ctx)
        return
    photos = ctx.data["photos"]
    for photo in photos:
        ctx.attach(subject_key, title, year, cid, photo)
    ctx.say(t("photo.saved", count=len(photos), title=t(f"title.{title}"), n=n))
    _restore(ctx)


# ------------------------------------------------------------------------------------------------ village leader


def _leader_village(ctx: Ctx) -> Any:
    me = ctx.me()
    if me is None or not me.has("village_leader"):
        ctx.say(t("common.not_allowed", role=t("role.village_leader")))
        _menu(ctx)
        return None
    village = ctx.view.village(me.village_id) if me.village_id is not None else None
    if village is None:
        ctx.say(t("leader.no_village"))
        _menu(ctx)
        return None
    return village


def _households(ctx: Ctx) -> None:
    village = _leader_village(ctx)
    if village is None:
        return
    rows = ctx.view.village_households(village.id, ctx.year)
    ctx.goto("households")
    buttons = [Button(short(f"{n}. {h.head_name}"), f"hh:{h.id}") for n, h in enumerate(rows[:15], 1)]
    buttons.append(btn("btn.add_household", "go:add_household"))
    buttons.append(btn("btn.done", "go:menu"))
    if not rows:
        ctx.say(t("leader.households_empty", village=village.name), buttons, ask=True)
        return
    lines = "\n".join(t("leader.household_line", n=n, name=h.head_name, state=t(f"status.{h.status}"))
                      for n, h in enumerate(rows[:15], 1))
    ctx.say(t("leader.households", village=village.name, count=len(rows), lines=lines))
    ctx.say(t("leader.households_ask"), buttons, ask=True)


def _step_households(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if not choice or not choice.startswith("hh:"):
        ctx.reask("common.not_understood")
        return
    _household_card(ctx, _num(choice))


def _household_card(ctx: Ctx, household_id: int) -> None:
    village = _leader_village(ctx)
    if village is None:
        return
    hh = ctx.view.household(household_id, ctx.year)
    if hh is None or hh.village_id != village.id:
        ctx.say(t("leader.not_in_village"))
        _households(ctx)
        return
    ctx.goto("household_card", hh=household_id)
    text = t("leader.card", name=hh.head_name, village=village.name, state=t(f"status.{hh.status}"))
    if hh.total is not None:
        text += " " + t("leader.card_score", total=_fmt(hh.total))
    buttons = []
    if hh.status in ("submitted", "questioned"):
        buttons.append(btn("btn.confirm", "confirm"))
        buttons.append(btn("btn.ask_again", "question"))
    if not hh.has_phone and hh.status in ("none", "draft", "returned", "questioned", "submitted"):
        buttons.append(btn("btn.proxy", "proxy"))
    buttons.append(btn("btn.back", "back"))
    ctx.say(text)
    ctx.say(t("leader.card_ask"), buttons, ask=True)


def _step_household_card(ctx: Ctx, ev: Event, choice: str | None) -> None:
    me = ctx.me()
    hh_id = int(ctx.data["hh"])
    hh = ctx.view.household(hh_id, ctx.year)
    if choice == "back" or hh is None or me is None:
        _households(ctx)
        return
    if choice == "confirm" and hh.status in ("submitted", "questioned"):
        ctx.emit(ConfirmSubmission(hh_id, "gia_dinh", ctx.year))
        ctx.say(t("leader.confirmed", name=hh.head_name))
        _households(ctx)
    elif choice == "question" and hh.status in ("submitted", "questioned"):
        ctx.goto("question_note", hh=hh_id)
        ctx.say(t("leader.ask_note", name=hh.head_name), [btn("btn.back", "back")], ask=True)
    elif choice == "proxy" and not hh.has_phone:
        _start_assessment(ctx, "gia_dinh", Subject("household", hh_id), proxy_by=me.id)
    else:
        ctx.reask("common.not_understood")


def _step_question_note(ctx: Ctx, ev: Event, choice: str | None) -> None:
    hh_id = int(ctx.data["hh"])
    if choice == "back":
        _household_card(ctx, hh_id)
        return
    note = " ".join(ev.text.split()) if ev.kind == "text" else ""
    if len(note) < 3:
        ctx.reask("leader.bad_note")
        return
    hh = ctx.view.household(hh_id, ctx.year)
    year = ctx.year
    ctx.emit(QuestionSubmission(hh_id, "gia_dinh", year, note))
    if hh is not None and hh.head_person_id is not None and hh.has_phone:
        say = Say(t("leader.family_questioned", title=t("title.gia_dinh"), year=year, note=short(note, 180)),
                  (btn("btn.view_file", f"go:assess:gia_dinh:household:{hh_id}"),))
        ctx.emit(NotifyPerson(hh.head_person_id, say, reason="questioned"))
        ctx.say(t("leader.questioned", name=hh.head_name))
    else:
        ctx.say(t("leader.questioned_no_chat", name=hh.head_name if hh else ""))
    _households(ctx)


def _step_add_household_name(ctx: Ctx, ev: Event, choice: str | None) -> None:
    name = _valid_name(ev.text) if ev.kind == "text" else None
    if name is None:
        ctx.reask("signup.bad_name")
        return
    ctx.goto("add_household_members", name=name)
    ctx.say(t("leader.add_members", name=name), [btn("btn.back", "go:households")], ask=True)


def _step_add_household_members(ctx: Ctx, ev: Event, choice: str | None) -> None:
    value = ans.parse_int(ev.text) if ev.kind == "text" else None
    if value is None or not 1 <= value <= 50:
        ctx.reask("signup.bad_members")
        return
    village = _leader_village(ctx)
    if village is None:
        return
    name = ctx.data["name"]
    ctx.emit(CreateHousehold(name, value, None, village.commune_code, village.id, has_phone=False,
                             head_is_me=False))
    ctx.say(t("leader.added", name=name, village=village.name))
    ctx.goto("idle")
    ctx.say(t("menu.ask"), [btn("btn.households", "go:households"), btn("btn.done", "go:menu")], ask=True)


def _invite_code(ctx: Ctx) -> None:
    village = _leader_village(ctx)
    if village is None:
        return
    code = village.invite_code if village.invite_code.startswith("v_") else f"v_{village.invite_code}"
    link = ctx.view.invite_link(village.invite_code)
    if link:
        ctx.say(t("leader.invite", village=village.name, code=code, link=link))
    else:
        ctx.say(t("leader.invite_nolink", village=village.name, code=code))
    ctx.reask()


# ------------------------------------------------------------------------------------------------ clan head


def _clan_menu(ctx: Ctx) -> None:
    me = ctx.me()
    if me is None or not me.has("clan_head"):
        ctx.say(t("common.not_allowed", role=t("role.clan_head")))
        _menu(ctx)
        return
    if me.clan_id is None:
        ctx.goto("clan_name")
        ctx.say(t("clan.ask_name"), ask=True)
        return
    clan = ctx.view.clan(me.clan_id, ctx.year)
    if clan is None:
        _menu(ctx)
        return
    ctx.goto("clan_menu")
    ctx.say(t("clan.menu", name=clan.name, count=len(clan.members)))
    ctx.say(t("clan.ask"), [btn("btn.add_household", "go:clan_add"), btn("btn.clan_members", "members"),
                            btn("btn.clan_assess", f"go:assess:dong_ho:clan:{clan.id}"),
                            btn("btn.register_menu", "go:register"), btn("btn.done", "go:menu")], ask=True)


def _step_clan_menu(ctx: Ctx, ev: Event, choice: str | None) -> None:
    me = ctx.me()
    if choice == "members" and me is not None and me.clan_id is not None:
        clan = ctx.view.clan(me.clan_id, ctx.year)
        if clan is not None and clan.members:
            lines = "\n".join(f"{n}. {h.head_name} — {t(f'status.{h.status}')}" for n, h in enumerate(clan.members, 1))
            ctx.say(t("clan.members", lines=lines))
        else:
            ctx.say(t("clan.members_empty"))
        ctx.reask()
        return
    ctx.reask("common.not_understood")


def _step_clan_name(ctx: Ctx, ev: Event, choice: str | None) -> None:
    name = " ".join(ev.text.split()) if ev.kind == "text" else ""
    me = ctx.me()
    if not 2 <= len(name) <= 80 or not any(ch.isalpha() for ch in name):
        ctx.reask("clan.bad_name")
        return
    commune_code = me.commune_code if me is not None else ctx.data.get("commune")
    ctx.emit(CreateClan(name, int(commune_code or 0)))
    ctx.goto("idle")
    ctx.say(t("clan.created", name=name))
    ctx.say(t("clan.ask"), [btn("btn.add_household", "go:clan_add"), btn("btn.later", "go:menu")], ask=True)


def _clan_add(ctx: Ctx) -> None:
    me = ctx.me()
    if me is None or me.clan_id is None:
        ctx.say(t("clan.need_clan"))
        _menu(ctx)
        return
    ctx.goto("clan_add")
    ctx.say(t("clan.ask_member"), [btn("btn.done", "go:clan")], ask=True)


def _step_clan_add(ctx: Ctx, ev: Event, choice: str | None) -> None:
    me = ctx.me()
    if me is None or me.clan_id is None or me.commune_code is None:
        _menu(ctx)
        return
    query = " ".join(ev.text.split()) if ev.kind == "text" else ""
    if len(query) < 2:
        ctx.reask("clan.ask_member")
        return
    hits = ctx.view.search_households(me.commune_code, query, ctx.year)[:8]
    if not hits:
        ctx.say(t("clan.no_member", query=short(query, 40)))
        return
    lines = "\n".join(f"{n}. {h.head_name} – {h.village_name}" for n, h in enumerate(hits, 1))
    buttons = [Button(short(f"{n}. {h.head_name}"), f"add:{h.id}") for n, h in enumerate(hits, 1)]
    buttons.append(btn("btn.search_again", "again"))
    ctx.goto("clan_add_pick", hits=[h.id for h in hits])
    ctx.say(t("clan.pick_member", lines=lines), buttons, ask=True)


def _step_clan_add_pick(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice == "again":
        _clan_add(ctx)
        return
    if choice and choice.startswith("add:") and _num(choice) in ctx.data.get("hits", []):
        hh = ctx.view.household(_num(choice), ctx.year)
        if hh is not None:
            ctx.goto("clan_add_confirm", hh=hh.id)
            ctx.say(t("clan.confirm_member", name=hh.head_name, village=hh.village_name),
                    [btn("btn.yes", "yes"), btn("btn.no", "no")], ask=True)
            return
    if ev.kind == "text" and choice is None:  # typed another name
        _step_clan_add(ctx, ev, None)
        return
    ctx.reask("common.not_understood")


def _step_clan_add_confirm(ctx: Ctx, ev: Event, choice: str | None) -> None:
    if choice is None and ev.kind == "text":
        yn = ans.parse_yes_no(ev.text)
        choice = {True: "yes", False: "no"}.get(yn) if isinstance(yn, bool) else None
    me = ctx.me()
    if choice == "no" or me is None or me.clan_id is None:
        _clan_add(ctx)
        return
    if choice != "yes":
        ctx.reask("common.not_understood")
        return
    hh_id = int(ctx.data["hh"])
    hh = ctx.view.household(hh_id, ctx.year)
    clan = ctx.view.clan(me.clan_id, ctx.year)
    name = hh.head_name if hh else ""
    ctx.goto("clan_add")
    if clan is not None and any(m.id == hh_id for m in clan.members):
        ctx.say(t("clan.already", name=name), [btn("btn.done", "go:clan")], ask=True)
        return
    ctx.emit(AddClanMember(me.clan_id, hh_id))
    ctx.say(t("clan.added", name=name), [btn("btn.done", "go:clan")], ask=True)


# ------------------------------------------------------------------------------------------------ officer


def _officer_commune(ctx: Ctx) -> int | None:
    me = ctx.me()
    if me is None or not me.has("officer"):
        ctx.say(t("common.not_allowed", role=t("role.officer")))
        return None
    role = next((r for r in me.roles if r.role == "officer" and r.status == "granted"), None)
    code = (role.commune_code if role else None) or me.commune_code
    if code is None:
        ctx.say(t("officer.no_commune"))
    return code


def _stats(ctx: Ctx) -> None:
    code = _officer_commune(ctx)
    if code is None:
        ctx.reask()
        return
    year = ctx.year
    hit = communes.commune(code)
    lines = [t("officer.stats_head", commune=hit.name if hit else str(code), year=year)]
    for f in ctx.view.commune_figures(code, year):
        if not f.subjects and not f.registered:  # e.g. no agency or school entered yet: a line of zeros says nothing
            continue
        pct = 100.0 * f.recognised / f.subjects if f.subjects else 0.0
        target = t("officer.stats_target", target=_fmt(f.target)) if f.target is not None else ""
        lines.append(t("officer.stats_line", title=t(f"title.{f.title}"), registered=_fmt(f.registered),
                       submitted=_fmt(f.submitted), recognised=_fmt(f.recognised), subjects=_fmt(f.subjects),
                       pct=_fmt(round(pct)), target=target))
    _say_lines(ctx, lines)
    _review_link(ctx)


def _review_link(ctx: Ctx) -> None:
    if _officer_commune(ctx) is None:
        ctx.reask()
        return
    ctx.say(t("officer.review_link", url=ctx.view.public_base_url().rstrip("/")))
    ctx.emit(SendLoginLink())
    ctx.reask()


STEPS: dict[str, Callable[[Ctx, Event, str | None], None]] = {
    "idle": _step_idle,
    "choose_role": _step_choose_role,
    "commune": _step_commune,
    "commune_pick": _step_commune_pick,
    "village_pick": _step_village_pick,
    "village_new": _step_village_new,
    "name": _step_name,
    "members": _step_members,
    "unit_name": _step_unit_name,
    "unit_kind": _step_unit_kind,
    "unit_staff": _step_unit_staff,
    "phone": _step_phone,
    "consent": _step_consent,
    "reg_offer": _step_reg_offer,
    "register": _step_register,
    "register_confirm": _step_register_confirm,
    "cancel_confirm": _step_cancel_confirm,
    "assess": _step_assess,
    "evidence": _step_evidence,
    "summary": _step_summary,
    "edit_pick": _step_edit_pick,
    "photo_where": _step_photo_where,
    "households": _step_households,
    "household_card": _step_household_card,
    "question_note": _step_question_note,
    "add_household_name": _step_add_household_name,
    "add_household_members": _step_add_household_members,
    "clan_name": _step_clan_name,
    "clan_menu": _step_clan_menu,
    "clan_add": _step_clan_add,
    "clan_add_pick": _step_clan_add_pick,
    "clan_add_confirm": _step_clan_add_confirm,
}


def returned_notice(*, title: str, year: int, note: str, subject: Subject) -> Say:
    """The message a family gets when the commune returns its submission (for the review pages to enqueue)."""
    text = t("assess.summary_returned", note=short(note, 200))
    value = f"go:assess:{title}:{subject.key()}"
    return Say(text, (btn("btn.new_photo", value), btn("btn.view_file", value)))
