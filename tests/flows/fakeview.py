"""An in-memory world implementing flows.view.View, plus ``apply`` to play effects into it.

A fake at the boundary: the flows read it like the database, and the transcript driver applies the
effects a step returns, the way bot/uow.py does with real rows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flows import effects as fx
from flows.criteria import CriteriaSet, load_sets
from flows.effects import Subject
from flows.view import (
    AssessmentInfo,
    ClanInfo,
    HouseholdInfo,
    PersonInfo,
    Role,
    TitleFigures,
    UnitInfo,
    VillageInfo,
)

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
_SETS = load_sets()


@dataclass
class FakePerson:
    id: int
    name: str
    phone: str | None = None
    commune: int | None = None
    village: int | None = None
    roles: list[list[Any]] = field(default_factory=list)  # [role, status]
    consent_at: datetime | None = None


@dataclass
class FakeAssessment:
    status: str = "draft"
    answers: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, list[str]] = field(default_factory=dict)
    note: str = ""
    total: float | None = None
    proxy_by: int | None = None
    leader_note: str = ""


class FakeView:
    """The world of one chat: ``me`` is the person behind it."""

    def __init__(self, world: dict[str, Any] | None = None) -> None:
        w = copy.deepcopy(world or {})  # YAML anchors share objects between transcripts
        self.me_id: int | None = w.get("me")
        self.persons = {p["id"]: FakePerson(**p) for p in w.get("persons", [])}
        self.village_rows = {v["id"]: dict(v) for v in w.get("villages", [])}
        self.households = {h["id"]: {"has_phone": True, "head_person": None, "members": 1, **h}
                           for h in w.get("households", [])}
        self.clans = {c["id"]: {"members": [], **c} for c in w.get("clans", [])}
        self.units = {u["id"]: {"kind": "agency", "staff": 1, "rep_person": None, **u} for u in w.get("units", [])}
        self.regs: set[tuple[str, str, int]] = set()
        for item in w.get("registrations", []):
            subject, title, year = item.split("/")
            self.regs.add((subject, title, int(year)))
        self.assessments: dict[tuple[str, str, int], FakeAssessment] = {}
        for key, value in (w.get("assessments") or {}).items():
            self.assessments[self._key(key)] = FakeAssessment(**value)
        self.computed_values: dict[str, dict[str, Any]] = w.get("computed", {})
        self.figures: list[dict[str, Any]] = w.get("figures", [])
        self.deadline = date.fromisoformat(w.get("deadline", "2026-03-31"))
        self.served_codes = tuple(w.get("served", ()))
        self.base_url = w.get("public_base_url", "https://hoctap.example.vn")
        self.notified: list[tuple[int, Any]] = []
        self.proposed_village: int | None = None
        self.log: list[Any] = []

    @staticmethod
    def _key(text: str) -> tuple[str, str, int]:
        subject, title, year = text.split("/")
        return subject, title, int(year)

    # ------------------------------------------------------------------ View
    def me(self) -> PersonInfo | None:
        if self.me_id is None or self.me_id not in self.persons:
            return None
        p = self.persons[self.me_id]
        household = next((h["id"] for h in self.households.values() if h.get("head_person") == p.id), None)
        clan = next((c["id"] for c in self.clans.values() if c.get("head_person") == p.id), None)
        unit = next((u["id"] for u in self.units.values() if u.get("rep_person") == p.id), None)
        roles = tuple(Role(r[0], r[1], p.commune, p.village) for r in p.roles)
        return PersonInfo(p.id, p.name, p.phone, p.commune, p.village, roles, household, clan, unit)

    def campaign_year(self, now: datetime) -> int:
        return now.astimezone(TZ).year

    def criteria(self, title: str) -> CriteriaSet:
        return _SETS[title]

    def served(self) -> tuple[int, ...]:
        return self.served_codes

    def _village(self, v: dict[str, Any]) -> VillageInfo:
        return VillageInfo(v["id"], v["name"], v["commune"], v.get("code", f"code{v['id']}"), v.get("status", "active"))

    def villages(self, commune_code: int) -> list[VillageInfo]:
        return [self._village(v) for v in self.village_rows.values() if v["commune"] == commune_code]

    def village(self, village_id: int) -> VillageInfo | None:
        v = self.village_rows.get(village_id)
        return self._village(v) if v else None

    def village_by_code(self, invite_code: str) -> VillageInfo | None:
        code = invite_code.removeprefix("v_").lower()
        v = next((v for v in self.village_rows.values() if v.get("code", "").lower() == code), None)
        return self._village(v) if v else None

    def registrations(self, subject: Subject, year: int) -> list[str]:
        return sorted(tt for s, tt, y in self.regs if s == subject.key() and y == year)

    def registration_deadline(self, commune_code: int, year: int) -> date:
        return self.deadline

    def assessment(self, subject: Subject, title: str, year: int) -> AssessmentInfo:
        a = self.assessments.get((subject.key(), title, year))
        if a is None:
            return AssessmentInfo()
        return AssessmentInfo(a.status, dict(a.answers), {k: len(v) for k, v in a.evidence.items()}, a.note,
                              a.total, a.proxy_by is not None, a.leader_note)

    def computed(self, subject: Subject, title: str, year: int) -> dict[str, Any]:
        return dict(self.computed_values.get(f"{subject.key()}/{title}", {}))

    def household(self, household_id: int, year: int) -> HouseholdInfo | None:
        h = self.households.get(household_id)
        if h is None:
            return None
        a = self.assessments.get((f"household:{household_id}", "gia_dinh", year))
        v = self.village_rows.get(h.get("village"))
        return HouseholdInfo(h["id"], h["head"], h.get("village"), h["commune"], h.get("head_person"),
                             h["has_phone"], v["name"] if v else "", a.status if a else "none",
                             a.total if a else None)

    def village_households(self, village_id: int, year: int) -> list[HouseholdInfo]:
        return [self.household(h["id"], year) for h in self.households.values()  # type: ignore[misc]
                if h.get("village") == village_id]

    def search_households(self, commune_code: int, query: str, year: int) -> list[HouseholdInfo]:
        from flows.answers import fold

        q = fold(query)
        return [self.household(h["id"], year) for h in self.households.values()  # type: ignore[misc]
                if h["commune"] == commune_code and q in fold(h["head"])]

    def clan(self, clan_id: int, year: int) -> ClanInfo | None:
        c = self.clans.get(clan_id)
        if c is None:
            return None
        members = tuple(self.household(m, year) for m in c["members"])
        return ClanInfo(c["id"], c["name"], c["commune"], members)  # type: ignore[arg-type]

    def unit(self, unit_id: int) -> UnitInfo | None:
        u = self.units.get(unit_id)
        if u is None:
            return None
        return UnitInfo(u["id"], u["name"], u["kind"], u["staff"], u["commune"], u.get("rep_person"))

    def commune_figures(self, commune_code: int, year: int) -> list[TitleFigures]:
        return [TitleFigures(**f) for f in self.figures]

    def public_base_url(self) -> str:
        return self.base_url

    def invite_link(self, invite_code: str) -> str:
        return f"https://t.me/hoctap_bot?start=v_{invite_code.removeprefix('v_')}"

    # ------------------------------------------------------------------ effects
    def _assessment(self, subject: Subject, title: str, year: int) -> FakeAssessment:
        return self.assessments.setdefault((subject.key(), title, year), FakeAssessment())

    def apply(self, effect: Any) -> None:  # noqa: C901 - one branch per effect type
        self.log.append(effect)
        if isinstance(effect, fx.ProposeVillage):
            vid = max(self.village_rows, default=0) + 1
            self.village_rows[vid] = {"id": vid, "name": effect.name, "commune": effect.commune_code,
                                  "code": f"new{vid}", "status": "pending"}
            self.proposed_village = vid
        elif isinstance(effect, fx.RegisterPerson):
            pid = max(self.persons, default=0) + 1
            village = effect.village_id if effect.village_id is not None else self.proposed_village
            self.persons[pid] = FakePerson(pid, effect.name, effect.phone, effect.commune_code, village,
                                           [], effect.consent_at)
            self.me_id = pid
        elif isinstance(effect, fx.GrantRole | fx.RequestRole):
            status = "granted" if isinstance(effect, fx.GrantRole) else "pending"
            assert self.me_id is not None
            self.persons[self.me_id].roles.append([effect.role, status])
        elif isinstance(effect, fx.CreateHousehold):
            hid = max(self.households, default=0) + 1
            village = effect.village_id if effect.village_id is not None else self.proposed_village
            self.households[hid] = {"id": hid, "head": effect.head_name, "commune": effect.commune_code,
                                    "village": village, "members": effect.members, "has_phone": effect.has_phone,
                                    "head_person": self.me_id if effect.head_is_me else None}
        elif isinstance(effect, fx.CreateUnit):
            uid = max(self.units, default=0) + 1
            self.units[uid] = {"id": uid, "name": effect.name, "kind": effect.kind, "staff": effect.staff,
                               "commune": effect.commune_code, "rep_person": self.me_id}
        elif isinstance(effect, fx.RegisterTitle):
            self.regs.add((effect.subject.key(), effect.title, effect.year))
        elif isinstance(effect, fx.CancelRegistration):
            self.regs.discard((effect.subject.key(), effect.title, effect.year))
        elif isinstance(effect, fx.SaveAnswer):
            a = self._assessment(effect.subject, effect.title, effect.year)
            assert a.status not in ("in_review", "recognised", "rejected")
            a.answers[effect.criterion] = effect.value
            if effect.proxy_by is not None:
                a.proxy_by = effect.proxy_by
        elif isinstance(effect, fx.AttachEvidence):
            a = self._assessment(effect.subject, effect.title, effect.year)
            a.evidence.setdefault(effect.criterion, []).append(effect.sha256)
        elif isinstance(effect, fx.SubmitAssessment):
            a = self._assessment(effect.subject, effect.title, effect.year)
            a.status, a.total = "submitted", effect.total
        elif isinstance(effect, fx.ConfirmSubmission):
            self._assessment(Subject("household", effect.household_id), effect.title, effect.year).status = "confirmed"
        elif isinstance(effect, fx.QuestionSubmission):
            a = self._assessment(Subject("household", effect.household_id), effect.title, effect.year)
            a.status, a.leader_note = "questioned", effect.note
        elif isinstance(effect, fx.NotifyPerson):
            self.notified.append((effect.person_id, effect.say))
        elif isinstance(effect, fx.CreateClan):
            cid = max(self.clans, default=0) + 1
            self.clans[cid] = {"id": cid, "name": effect.name, "commune": effect.commune_code,
                               "head_person": self.me_id, "members": []}
        elif isinstance(effect, fx.AddClanMember):
            self.clans[effect.clan_id]["members"].append(effect.household_id)
        elif isinstance(effect, fx.SendLoginLink):
            pass  # a credential made by the host (bot/uow.py); nothing for the flows to remember
        else:  # pragma: no cover - a new effect type needs a line here
            raise AssertionError(f"FakeView cannot apply {effect!r}")

    def set(self, change: dict[str, Any]) -> None:
        """World changes between steps (an officer granted a role, the commune returned a file...)."""
        for key, value in (change.get("assessments") or {}).items():
            a = self._assessment(Subject.parse(key.split("/")[0]), key.split("/")[1], int(key.split("/")[2]))
            for attr, v in value.items():
                setattr(a, attr, v)
        for grant in change.get("grant", []):
            person = self.persons[grant["person"]]
            person.roles = [r for r in person.roles if r[0] != grant["role"]] + [[grant["role"], "granted"]]
        if "me" in change:
            self.me_id = change["me"]
        for key, value in (change.get("computed") or {}).items():
            self.computed_values[key] = value
