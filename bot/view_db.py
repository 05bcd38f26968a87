"""The database-backed flows.view.View: read-only queries for one chat identity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, String, and_, bindparam
from sqlalchemy import select as core_select
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col, func, select

from flows.answers import fold
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
from models.db import Prepared
from models.tables import (
    Assessment,
    ChannelCredential,
    Clan,
    ClanMember,
    Commune,
    Evidence,
    Household,
    Person,
    Registration,
    ReviewDecision,
    RoleGrant,
    Unit,
    Village,
)

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
SUBMITTED = ("submitted", "confirmed", "questioned", "in_review", "returned", "recognised", "rejected")
SUBJECT_OF_TITLE = {"gia_dinh": "household", "dong_ho": "clan", "cong_dong": "village", "don_vi": "unit",
                    "cong_dan": "person"}


@lru_cache(maxsize=64)
def criteria_sets(local: tuple[str, ...]) -> dict[str, CriteriaSet]:
    """The criteria sets with the local overlays ``local`` (province, province/commune), parsed once."""
    return load_sets(local=local)


def _assessment_statement(_dialect: Any) -> Any:
    a, e = Assessment.__table__, Evidence.__table__  # type: ignore[attr-defined]
    return (
        core_select(a.c.id, a.c.status, a.c.answers, a.c.total, a.c.proxy, a.c.leader_note, e.c.criterion)
        .select_from(a.outerjoin(e, e.c.assessment_id == a.c.id))
        .where(a.c.subject_type == bindparam("kind"), a.c.subject_id == bindparam("subject_id"),
               a.c.title == bindparam("title"), a.c.year == bindparam("year"))
        .order_by(e.c.id)
    )


# one statement for an assessment and its photos' criteria (one row per photo, or one without)
_ASSESSMENT = Prepared(_assessment_statement)

AssessmentKey = tuple[str, int, str, int]  # subject kind, subject id, title, year


def _assessments_many_statement(_dialect: Any) -> Any:
    """PostgreSQL: _ASSESSMENT for many (kind, subject id, title, year) at once, each row led by its key."""
    a, e = Assessment.__table__, Evidence.__table__  # type: ignore[attr-defined]
    keys = func.unnest(bindparam("kinds", type_=postgresql.ARRAY(String)),
                       bindparam("ids", type_=postgresql.ARRAY(Integer)),
                       bindparam("titles", type_=postgresql.ARRAY(String)),
                       bindparam("years", type_=postgresql.ARRAY(Integer))).table_valued(
        "kind", "subject_id", "title", "year").render_derived(name="k")
    return (
        core_select(keys.c.kind, keys.c.subject_id, keys.c.title, keys.c.year,
                    a.c.id, a.c.status, a.c.answers, a.c.total, a.c.proxy, a.c.leader_note, e.c.criterion)
        .select_from(keys.join(a, and_(a.c.subject_type == keys.c.kind, a.c.subject_id == keys.c.subject_id,
                                       a.c.title == keys.c.title, a.c.year == keys.c.year))
                     .outerjoin(e, e.c.assessment_id == a.c.id))
        .order_by(e.c.id)
    )


_ASSESSMENTS_MANY = Prepared(_assessments_many_statement)


def _assessment_of(rows: list[tuple[Any, ...]]) -> tuple[AssessmentInfo, AssessmentRow]:
    """An assessment's rows of _ASSESSMENT (one per photo, or one without) → what DbView keeps of it; the
    returned file's note is left to the caller (it needs another read)."""
    row_id, status, answers, total, proxy, leader_note, _criterion = rows[0]
    counts: dict[str, int] = {}
    for *_columns, criterion in rows:
        if criterion is not None:
            counts[criterion] = counts.get(criterion, 0) + 1
    info = AssessmentInfo(status, dict(answers or {}), counts, "", total, proxy, leader_note or "")
    return info, AssessmentRow(row_id, status, answers or {})


def load_assessments(session: Session, keys: list[AssessmentKey]) -> dict[AssessmentKey, Any]:
    """PostgreSQL: what DbView.assessment reads, for many assessments in ONE statement: key → (info, row),
    or (an empty AssessmentInfo, None) where there is no such assessment yet. A returned file is left out
    (its note takes another read: DbView reads it itself). Hand the result to bot.uow as Preload.assessments."""
    if not keys:
        return {}
    grouped: dict[AssessmentKey, list[tuple[Any, ...]]] = {}
    for kind, subject_id, title, year, *rest in _ASSESSMENTS_MANY.rows(session, {
            "kinds": [k[0] for k in keys], "ids": [k[1] for k in keys], "titles": [k[2] for k in keys],
            "years": [k[3] for k in keys]}):
        grouped.setdefault((kind, subject_id, title, year), []).append(tuple(rest))
    out: dict[AssessmentKey, Any] = {}
    for key in keys:
        rows = grouped.get(key)
        if rows is None:
            out[key] = (AssessmentInfo(), None)
        elif rows[0][1] != "returned":
            out[key] = _assessment_of(rows)
    return out


@dataclass(frozen=True)
class Preload:
    """What bot.uow read about the chat's person in its first query: me(), and the criteria's local key."""

    me: PersonInfo | None
    local: tuple[str, ...] = ()
    # assessments read ahead (bot.uow.load_many on PostgreSQL: see load_assessments), as DbView would read them
    assessments: dict[AssessmentKey, Any] = field(default_factory=dict)


@dataclass
class AssessmentRow:
    """The columns of a loaded assessment that bot.uow needs to save answers without reloading the row."""

    id: int
    status: str
    answers: dict[str, Any]


class DbView:
    """What the flows may read, for the person behind ``identity`` (which may have no person yet).

    ``identity`` is a ChatIdentity or anything with its ``channel``, ``person_id`` (bot.uow passes a plain
    row). ``preload``: the person as bot.uow already read it (no further query for me() or criteria())."""

    def __init__(self, session: Session, identity: Any, settings: Any = None, *,
                 preload: Preload | None = None) -> None:
        self.session = session
        self.identity = identity
        self.settings = settings
        self._me: PersonInfo | None = None
        self._preload = preload
        # A DbView lives for one event and is read-only while the flows run (effects are applied after
        # handle() returns), so repeated reads within the event can be memoised.
        self._person: Person | None = None
        self._criteria_sets: dict[str, CriteriaSet] | None = None
        self._assessments: dict[tuple[str, int, str, int], AssessmentInfo] = {}
        self.assessment_rows: dict[tuple[str, int, str, int], AssessmentRow] = {}
        # called before an assessment is read from the database (bot.uow: writes the batch's staged answers)
        self.before_read: Callable[[], None] | None = None
        if preload is not None:
            for key, (info, row) in preload.assessments.items():
                self._assessments[key] = info
                if row is not None:
                    self.assessment_rows[key] = row

    # ------------------------------------------------------------------ people
    def person(self) -> Person | None:
        if self.identity.person_id is None:
            return None
        if self._person is None or self._person.id != self.identity.person_id:
            self._person = self.session.get(Person, self.identity.person_id)
        return self._person

    def me(self) -> PersonInfo | None:
        if self._preload is not None:
            return self._preload.me
        person = self.person()
        if person is None or person.id is None:
            return None
        grants = self.session.exec(
            select(RoleGrant).where(RoleGrant.person_id == person.id, RoleGrant.status != "revoked")
        ).all()
        roles = tuple(Role(g.role, g.status, g.commune_code, g.village_id) for g in grants)
        household = self.session.exec(
            select(Household.id).where(Household.head_person_id == person.id).order_by(col(Household.id))
        ).first()
        clan = self.session.exec(
            select(Clan.id).where(Clan.head_person_id == person.id).order_by(col(Clan.id))
        ).first()
        unit = self.session.exec(
            select(Unit.id).where(Unit.rep_person_id == person.id).order_by(col(Unit.id))
        ).first()
        return PersonInfo(person.id, person.name, person.phone, person.commune_code, person.village_id, roles,
                          household, clan, unit)

    def campaign_year(self, now: datetime) -> int:
        tz = getattr(self.settings, "timezone", None) or DEFAULT_TZ
        return now.astimezone(ZoneInfo(tz)).year

    def criteria(self, title: str) -> CriteriaSet:
        if self._criteria_sets is None and self._preload is not None:
            self._criteria_sets = criteria_sets(self._preload.local)
        if self._criteria_sets is None:
            person = self.person()
            local: tuple[str, ...] = ()
            if person is not None and person.commune_code is not None:
                commune = self.session.get(Commune, person.commune_code)
                if commune is not None:
                    local = (str(commune.province_code), f"{commune.province_code}/{commune.code}")
            self._criteria_sets = criteria_sets(local)
        return self._criteria_sets[title]

    def served(self) -> tuple[int, ...]:
        if self.settings is not None and hasattr(self.settings, "served_codes"):
            codes = tuple(self.settings.served_codes())
            if codes:
                return codes
        return tuple(self.session.exec(select(Commune.code).where(Commune.is_demo == False)).all())  # noqa: E712

    # ------------------------------------------------------------------ villages
    @staticmethod
    def _village(v: Village) -> VillageInfo:
        return VillageInfo(v.id or 0, v.name, v.commune_code, v.invite_code, v.status)

    def villages(self, commune_code: int) -> list[VillageInfo]:
        rows = self.session.exec(
            select(Village).where(Village.commune_code == commune_code, col(Village.status).in_(("active", "pending")))
            .order_by(col(Village.name))
        ).all()
        return [self._village(v) for v in rows]

    def village(self, village_id: int) -> VillageInfo | None:
        v = self.session.get(Village, village_id)
        return self._village(v) if v else None

    def village_by_code(self, invite_code: str) -> VillageInfo | None:
        code = invite_code.strip().lower()
        candidates = {code, code.removeprefix("v_"), f"v_{code.removeprefix('v_')}"}
        v = self.session.exec(select(Village).where(func.lower(Village.invite_code).in_(candidates))).first()
        return self._village(v) if v else None

    # ------------------------------------------------------------------ the yearly cycle
    def registrations(self, subject: Subject, year: int) -> list[str]:
        rows = self.session.exec(
            select(Registration.title).where(
                Registration.subject_type == subject.kind, Registration.subject_id == subject.id,
                Registration.year == year, Registration.status == "registered",
            )
        ).all()
        return sorted(set(rows))

    def registration_deadline(self, commune_code: int, year: int) -> date:
        from models.tables import CampaignYear

        row = self.session.exec(
            select(CampaignYear).where(CampaignYear.commune_code == commune_code, CampaignYear.year == year)
        ).first()
        if row is not None and row.registration_deadline is not None:
            tz = ZoneInfo(getattr(self.settings, "timezone", None) or DEFAULT_TZ)
            deadline = row.registration_deadline
            return deadline.astimezone(tz).date() if deadline.tzinfo else deadline.date()
        return date(year, 3, 31)

    def _assessment_row(self, subject: Subject, title: str, year: int) -> Assessment | None:
        if self.before_read is not None:
            self.before_read()
        return self.session.exec(
            select(Assessment).where(
                Assessment.subject_type == subject.kind, Assessment.subject_id == subject.id,
                Assessment.title == title, Assessment.year == year,
            )
        ).first()

    def assessment(self, subject: Subject, title: str, year: int) -> AssessmentInfo:
        key = (subject.kind, subject.id, title, year)
        if key not in self._assessments:
            self._assessments[key] = self._load_assessment(subject, title, year)
        return self._assessments[key]

    def _load_assessment(self, subject: Subject, title: str, year: int) -> AssessmentInfo:
        if self.before_read is not None:
            self.before_read()
        rows = _ASSESSMENT.rows(self.session, {"kind": subject.kind, "subject_id": subject.id, "title": title,
                                               "year": year})
        if not rows:
            return AssessmentInfo()
        info, row = _assessment_of(rows)
        self.assessment_rows[(subject.kind, subject.id, title, year)] = row
        if info.status == "returned":
            decision = self.session.exec(
                select(ReviewDecision).where(ReviewDecision.assessment_id == row.id, ReviewDecision.decision == "return")
                .order_by(col(ReviewDecision.id).desc())
            ).first()
            info = replace(info, note=decision.reason if decision else "")
        return info

    def _recognised_share(self, household_ids: list[int], year: int) -> float | None:
        if not household_ids:
            return None
        recognised = self.session.exec(
            select(func.count()).select_from(Assessment).where(
                Assessment.subject_type == "household", col(Assessment.subject_id).in_(household_ids),
                Assessment.title == "gia_dinh", Assessment.year == year, Assessment.status == "recognised",
            )
        ).one()
        return round(100.0 * recognised / len(household_ids), 1)

    def computed(self, subject: Subject, title: str, year: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if subject.kind == "clan":
            members = list(self.session.exec(select(ClanMember.household_id).where(ClanMember.clan_id == subject.id)).all())
            share = self._recognised_share(members, year)
            if share is not None:
                values["member_households_recognised"] = share
        elif subject.kind == "village":
            households = list(self.session.exec(select(Household.id).where(Household.village_id == subject.id)).all())
            share = self._recognised_share([h for h in households if h is not None], year)
            if share is not None:
                values["village_households_recognised"] = share
            clan_ids = sorted(set(self.session.exec(
                select(ClanMember.clan_id).join(Household, col(Household.id) == ClanMember.household_id)
                .where(Household.village_id == subject.id)
            ).all()))
            if not clan_ids:
                values["village_clans_recognised"] = "na"
            else:
                recognised = self.session.exec(
                    select(func.count()).select_from(Assessment).where(
                        Assessment.subject_type == "clan", col(Assessment.subject_id).in_(clan_ids),
                        Assessment.title == "dong_ho", Assessment.year == year, Assessment.status == "recognised",
                    )
                ).one()
                values["village_clans_recognised"] = round(100.0 * recognised / len(clan_ids), 1)
        return values

    # ------------------------------------------------------------------ households and clans
    def _household(self, h: Household, year: int) -> HouseholdInfo:
        a = self._assessment_row(Subject("household", h.id or 0), "gia_dinh", year)
        village = self.session.get(Village, h.village_id) if h.village_id else None
        return HouseholdInfo(h.id or 0, h.head_name, h.village_id, h.commune_code, h.head_person_id, h.has_phone,
                             village.name if village else "", a.status if a else "none", a.total if a else None)

    def household(self, household_id: int, year: int) -> HouseholdInfo | None:
        h = self.session.get(Household, household_id)
        return self._household(h, year) if h else None

    def village_households(self, village_id: int, year: int) -> list[HouseholdInfo]:
        rows = self.session.exec(select(Household).where(Household.village_id == village_id).order_by(col(Household.id))).all()
        return [self._household(h, year) for h in rows]

    def search_households(self, commune_code: int, query: str, year: int) -> list[HouseholdInfo]:
        q = fold(query)
        rows = self.session.exec(select(Household).where(Household.commune_code == commune_code).order_by(col(Household.id))).all()
        return [self._household(h, year) for h in rows if q and q in fold(h.head_name)][:20]

    def clan(self, clan_id: int, year: int) -> ClanInfo | None:
        c = self.session.get(Clan, clan_id)
        if c is None:
            return None
        rows = self.session.exec(
            select(Household).join(ClanMember, col(ClanMember.household_id) == Household.id)
            .where(ClanMember.clan_id == clan_id).order_by(col(Household.id))
        ).all()
        return ClanInfo(c.id or 0, c.name, c.commune_code, tuple(self._household(h, year) for h in rows))

    def unit(self, unit_id: int) -> UnitInfo | None:
        u = self.session.get(Unit, unit_id)
        if u is None:
            return None
        return UnitInfo(u.id or 0, u.name, u.kind, u.staff, u.commune_code, u.rep_person_id)

    # ------------------------------------------------------------------ officers
    def commune_figures(self, commune_code: int, year: int) -> list[TitleFigures]:
        commune = self.session.get(Commune, commune_code)
        targets = ((commune.targets or {}).get(str(year)) or {}) if commune else {}
        counts = {
            "gia_dinh": self.session.exec(select(func.count()).select_from(Household).where(Household.commune_code == commune_code)).one(),
            "dong_ho": self.session.exec(select(func.count()).select_from(Clan).where(Clan.commune_code == commune_code)).one(),
            "cong_dong": self.session.exec(
                select(func.count()).select_from(Village).where(Village.commune_code == commune_code, Village.status == "active")
            ).one(),
            "don_vi": self.session.exec(select(func.count()).select_from(Unit).where(Unit.commune_code == commune_code)).one(),
        }
        figures = []
        for title, subjects in counts.items():
            registered = self.session.exec(
                select(func.count()).select_from(Registration).where(
                    Registration.commune_code == commune_code, Registration.year == year, Registration.title == title,
                    Registration.status == "registered",
                )
            ).one()
            by_status = dict(self.session.exec(
                select(Assessment.status, func.count()).where(
                    Assessment.commune_code == commune_code, Assessment.year == year, Assessment.title == title
                ).group_by(Assessment.status)
            ).all())
            submitted = sum(n for s, n in by_status.items() if s in SUBMITTED)
            target = targets.get(title)
            figures.append(TitleFigures(title, int(subjects), int(registered), int(submitted),
                                        int(by_status.get("recognised", 0)), float(target) if target is not None else None))
        return figures

    def public_base_url(self) -> str:
        return str(getattr(self.settings, "public_base_url", "") or "").rstrip("/")

    def invite_link(self, invite_code: str) -> str:
        """A t.me deep link on Telegram (the bot's username is kept by bot/telegram.py), else the simulator."""
        code = invite_code.removeprefix("v_")
        if self.identity.channel == "telegram":
            cred = self.session.exec(select(ChannelCredential).where(ChannelCredential.channel == "telegram")).first()
            username = (cred.data or {}).get("username") if cred else None
            if username:
                return f"https://t.me/{username}?start=v_{code}"
        base = self.public_base_url()
        return f"{base}/simulator?start=v_{code}" if base else ""
