"""Commune review logic shared by the web pages, the JSON API and the CLI (officer add, villages import, export).

Helpers take a session and do not commit; the route or command that calls them commits once.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import secrets
import string
import sys
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any

from sqlalchemy import Text, and_, bindparam, case, cast, false, func, or_, true, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from bot.outbox import write_lock
from bot.uow import ensure_commune as bot_ensure_commune
from flows.answers import normalize_phone
from flows.criteria import (  # the two private helpers keep quick_proposal's points exactly score()'s
    NA,
    CriteriaSet,
    Criterion,
    ScoreResult,
    _earned,
    _invalid_reason,
    format_number,
    load_sets,
    score,
)
from flows.i18n import t
from models.db import make_engine, session_scope
from models.settings import Settings
from models.tables import (
    Assessment,
    AuditLog,
    ChatIdentity,
    Clan,
    ClanMember,
    Commune,
    Evidence,
    Household,
    Officer,
    OfficerCommune,
    OutboxMessage,
    Person,
    Registration,
    ReviewDecision,
    RoleGrant,
    Unit,
    Village,
)

TITLES = ("gia_dinh", "dong_ho", "cong_dong", "don_vi", "cong_dan")
TITLE_SUBJECT = {"gia_dinh": "household", "dong_ho": "clan", "cong_dong": "village", "don_vi": "unit",
                 "cong_dan": "person"}
DEFAULT_TARGETS = {"gia_dinh": 70, "dong_ho": 60, "cong_dong": 60, "don_vi": 70}
TITLE_NAMES = {"gia_dinh": "Gia đình học tập", "dong_ho": "Dòng họ học tập", "cong_dong": "Cộng đồng học tập",
               "don_vi": "Đơn vị học tập", "cong_dan": "Công dân học tập"}
STATUS_LABELS = {
    "draft": "Đang soạn",
    "submitted": "Đã gửi",
    "confirmed": "Trưởng thôn đã xác nhận",
    "questioned": "Trưởng thôn có ý kiến",
    "in_review": "Đang xét",
    "returned": "Trả lại để bổ sung",
    "recognised": "Đã công nhận",
    "rejected": "Không công nhận",
}
# what an officer may pick in the queue's state filter; "pending" = waiting for the commune
PENDING = ("submitted", "confirmed", "questioned", "in_review")
QUEUE_STATES = {"pending": PENDING, "returned": ("returned",), "recognised": ("recognised",),
                "rejected": ("rejected",), "all": (*PENDING, "returned", "recognised", "rejected")}
QUEUE_STATE_LABELS = {"pending": "Chờ xét", "returned": "Đã trả lại", "recognised": "Đã công nhận",
                      "rejected": "Không công nhận", "all": "Tất cả"}
DECISIONS = {"recognise": "recognised", "return": "returned", "reject": "rejected"}
DECISION_LABELS = {"recognise": "Công nhận", "return": "Trả lại để bổ sung", "reject": "Không công nhận",
                   "review_started": "Bắt đầu xét"}
STATUS_NAMES = {"official": "Chính thức", "partial": "Một phần", "draft": "Tạm thời (draft)"}

log = logging.getLogger(__name__)


class ReviewError(ValueError):
    """A request the officer can fix (Vietnamese message)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone columns; they are UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ communes


def ensure_commune(session: Session, code: int) -> Commune:
    """The commune row, created with its province from the official list (vietnam-provinces) when missing."""
    try:
        return bot_ensure_commune(session, code)
    except ValueError as exc:
        raise ReviewError(f"Không có xã/phường mã {code} trong danh mục hành chính.") from exc


def targets_for(commune: Commune, year: int) -> dict[str, float]:
    """The commune's targets (percent) for a year; QĐ 281-style defaults where the commune set none."""
    configured = (commune.targets or {}).get(str(year)) or {}
    merged: dict[str, float] = {k: float(v) for k, v in DEFAULT_TARGETS.items()}
    merged.update({k: float(v) for k, v in configured.items() if isinstance(v, int | float)})
    return merged


@lru_cache(maxsize=1024)  # one entry per commune served
def _sets_for(local: tuple[str, ...]) -> dict[str, CriteriaSet]:
    return load_sets(local=local)


def criteria_for(commune: Commune) -> dict[str, CriteriaSet]:
    """The criteria sets in force for a commune: national, then province, then commune supplements."""
    return _sets_for((str(commune.province_code), f"{commune.province_code}/{commune.code}"))


def title_name(title: str) -> str:
    return TITLE_NAMES.get(title, title)


# ------------------------------------------------------------------------------------------------ officers


def add_officer(
    session: Session, *, commune_code: int, name: str, username: str, phone: str = "",
    password: str | None = None, api_token: bool = False,
) -> tuple[Officer, str | None]:
    """Create an officer (or add a commune to an existing one); returns the API token when one was made."""
    from webhook.auth import hash_password, new_api_token

    ensure_commune(session, commune_code)
    username = username.strip().lower()
    if not username:
        raise ReviewError("Cần tên đăng nhập.")
    if phone:  # stored like the bot stores people's numbers (+84...), so the bot can link the two
        normalised = normalize_phone(phone)
        if normalised is None:
            raise ReviewError("Số điện thoại không hợp lệ.")
        phone = normalised
    officer = session.exec(select(Officer).where(Officer.username == username)).first()
    if officer is None:
        officer = Officer(username=username, name=name.strip(), phone=phone or None)
    else:
        officer.name = name.strip() or officer.name
        officer.phone = phone or officer.phone
    if password:
        officer.password_hash = hash_password(password)
    session.add(officer)
    session.flush()
    assert officer.id is not None
    link = session.exec(
        select(OfficerCommune).where(OfficerCommune.officer_id == officer.id,
                                     OfficerCommune.commune_code == commune_code)
    ).first()
    if link is None:
        session.add(OfficerCommune(officer_id=officer.id, commune_code=commune_code))
    token = new_api_token(session, officer) if api_token else None
    session.add(AuditLog(actor="system", action="officer_add", target=f"officer:{officer.id}",
                         detail={"commune": commune_code, "username": username}))
    session.flush()
    return officer, token


def officer_add_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hoctap officer add --commune CODE --name N --username U [--phone P] [--password P] [--api-token]`."""
    password = args.password
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("Mật khẩu (bỏ trống: chỉ đăng nhập bằng đường dẫn một lần): ") or None
    engine = make_engine(settings.db_url)
    try:
        with session_scope(engine) as session:
            officer, token = add_officer(
                session, commune_code=args.commune, name=args.name, username=args.username,
                phone=args.phone or "", password=password, api_token=bool(getattr(args, "api_token", False)),
            )
            link = None
            if settings.public_base_url:
                from bot.login_links import create_login_link

                assert officer.id is not None
                link = create_login_link(session, officer.id, settings.public_base_url)
    except ReviewError as exc:
        print(f"Lỗi: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"Cán bộ {officer.name} ({officer.username}) — xã mã {args.commune}.")
    if token:
        print(f"Mã API (chỉ hiện một lần): {token}")
    if link:
        print(f"Đường dẫn đăng nhập một lần (15 phút): {link}")
    return 0


# ------------------------------------------------------------------------------------------------ subjects


@dataclass
class SubjectInfo:
    name: str
    village_id: int | None
    person_ids: tuple[int, ...] = ()  # who hears about decisions (head, representative, leader)


def subject_infos(session: Session, keys: set[tuple[str, int]], *, contacts: bool = True
                  ) -> dict[tuple[str, int], SubjectInfo]:
    """Names, villages and contact people of many subjects, a few queries per kind; ``contacts=False`` leaves
    out villages' leaders (lists that show names only: the grants have no index by village)."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for kind, ident in keys:
        by_kind[kind].append(ident)
    out: dict[tuple[str, int], SubjectInfo] = {}
    # columns, not ORM objects: an export asks for thousands of subjects at once
    if by_kind.get("household"):
        for hid, name, village_id, head in session.exec(
                select(Household.id, Household.head_name, Household.village_id, Household.head_person_id)
                .where(col(Household.id).in_(by_kind["household"]))):
            out[("household", hid or 0)] = SubjectInfo(name, village_id, (head,) if head else ())
    if by_kind.get("clan"):
        for cid, name, head in session.exec(select(Clan.id, Clan.name, Clan.head_person_id)
                                            .where(col(Clan.id).in_(by_kind["clan"]))):
            out[("clan", cid or 0)] = SubjectInfo(name, None, (head,) if head else ())
    if by_kind.get("unit"):
        for uid, name, rep in session.exec(select(Unit.id, Unit.name, Unit.rep_person_id)
                                           .where(col(Unit.id).in_(by_kind["unit"]))):
            out[("unit", uid or 0)] = SubjectInfo(name, None, (rep,) if rep else ())
    if by_kind.get("person"):
        for pid, name, village_id in session.exec(select(Person.id, Person.name, Person.village_id)
                                                  .where(col(Person.id).in_(by_kind["person"]))):
            out[("person", pid or 0)] = SubjectInfo(name, village_id, (pid or 0,))
    if by_kind.get("village"):
        leaders: dict[int, list[int]] = defaultdict(list)
        for g in () if not contacts else session.exec(select(RoleGrant).where(RoleGrant.role == "village_leader", RoleGrant.status == "granted",
                                                      col(RoleGrant.village_id).in_(by_kind["village"]))):
            leaders[g.village_id or 0].append(g.person_id)
        for v in session.exec(select(Village).where(col(Village.id).in_(by_kind["village"]))):
            out[("village", v.id or 0)] = SubjectInfo(v.name, v.id, tuple(leaders.get(v.id or 0, ())))
    for key in keys:
        out.setdefault(key, SubjectInfo(f"{key[0]} #{key[1]}", None))
    return out


def person_names(session: Session, ids: set[int]) -> dict[int, str]:
    ids = {i for i in ids if i}
    if not ids:
        return {}
    return {p.id or 0: p.name or f"#{p.id}" for p in session.exec(select(Person).where(col(Person.id).in_(ids)))}


def village_names(session: Session, commune_codes: tuple[int, ...] | list[int]) -> dict[int, str]:
    rows = session.exec(select(Village).where(col(Village.commune_code).in_(list(commune_codes))))
    return {v.id or 0: v.name for v in rows}


# ------------------------------------------------------------------------------------------------ scoring


def _share(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 1)


def _recognised_household(household_id: Any, year: int) -> Any:
    """Join condition: the household's recognised gia_dinh of the year (at most one: unique constraint)."""
    return ((col(Assessment.subject_type) == "household") & (col(Assessment.subject_id) == household_id)
            & (col(Assessment.title) == "gia_dinh") & (col(Assessment.year) == year)
            & (col(Assessment.status) == "recognised"))


def _subject_shares(session: Session, kind: str, ids: list[int], year: int,
                    known: dict[int, tuple[int, int]] | None = None) -> dict[int, dict[str, Any]]:
    """Computed values of many clans or villages for one year, a few grouped queries in all. known: village id ->
    (households, households with a recognised gia_dinh of the year), counted by the caller (dashboard) for the
    year: those villages are not counted again in SQL."""
    out: dict[int, dict[str, Any]] = {i: {} for i in ids}
    if not ids:
        return out
    if kind == "clan":
        # share of member households recognised (a household is a member of a clan once: unique constraint)
        q = (select(ClanMember.clan_id, func.count(ClanMember.id), func.count(Assessment.id))
             .outerjoin(Assessment, _recognised_household(col(ClanMember.household_id), year))
             .where(col(ClanMember.clan_id).in_(ids)).group_by(ClanMember.clan_id))
        for clan_id, members, recognised in session.connection().execute(q).all():
            share = _share(int(recognised), int(members))
            if share is not None:
                out[clan_id]["member_households_recognised"] = share
        return out
    known = known or {}
    counts = [(i, *known[i]) for i in ids if i in known]
    unknown = [i for i in ids if i not in known]
    if unknown:
        counts += session.connection().execute(
            select(Household.village_id, func.count(Household.id), func.count(Assessment.id))
            .outerjoin(Assessment, _recognised_household(col(Household.id), year))
            .where(col(Household.village_id).in_(unknown)).group_by(Household.village_id)).all()
    for village_id, households, recognised in counts:
        share = _share(int(recognised), int(households))
        if share is not None:
            out[village_id]["village_households_recognised"] = share
    clans: dict[int, set[int]] = defaultdict(set)
    if session.get_bind().dialect.name == "postgresql":
        # the villages' households, each probing ix_clanmember_household_id (OFFSET 0 keeps the subquery a nested
        # loop: joined, PostgreSQL hashes the households against a scan of every clan member of the province,
        # twice the time); SQLite plans the plain join that way by itself
        member_of = (select(ClanMember.clan_id).where(col(ClanMember.household_id) == Household.id)
                     .offset(0).lateral())
        pairs = (select(Household.village_id, member_of.c.clan_id).select_from(Household).join(member_of, true())
                 .where(col(Household.village_id).in_(ids)).distinct())
    else:
        pairs = (select(Household.village_id, ClanMember.clan_id)
                 .join(Household, col(Household.id) == ClanMember.household_id)
                 .where(col(Household.village_id).in_(ids)).distinct())
    for village_id, clan_id in session.connection().execute(pairs).all():
        clans[village_id].add(clan_id)
    every_clan = sorted(set().union(*clans.values())) if clans else []
    recognised_clans = set(session.exec(select(Assessment.subject_id).where(
        Assessment.subject_type == "clan", Assessment.title == "dong_ho", Assessment.year == year,
        Assessment.status == "recognised", col(Assessment.subject_id).in_(every_clan)))) if every_clan else set()
    for village_id, members in clans.items():
        share = _share(len(members & recognised_clans), len(members))
        if share is not None:
            out[village_id]["village_clans_recognised"] = share
    return out


def computed_many(session: Session, keys: set[tuple[str, int, int]], *,
                  known_villages: dict[tuple[int, int], tuple[int, int]] | None = None
                  ) -> dict[tuple[str, int, int], dict[str, Any]]:
    """computed_values for many (subject type, subject id, year) at once; other subject types get {}.
    known_villages: (village id, year) -> (households of the village, of them with a recognised gia_dinh that
    year), where the caller has counted them already. The dashboard counts the commune's own households and
    assessments; _subject_shares counts every household of the village: the same as long as a household, its
    village and its assessment carry one commune code, as everything that writes them does."""
    out: dict[tuple[str, int, int], dict[str, Any]] = {k: {} for k in keys}
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for kind, ident, year in keys:
        if kind in ("clan", "village"):
            groups[(kind, year)].append(ident)
    for (kind, year), ids in groups.items():
        known = {v: n for (v, y), n in (known_villages or {}).items() if y == year} if kind == "village" else None
        for ident, values in _subject_shares(session, kind, sorted(set(ids)), year, known).items():
            out[(kind, ident, year)] = values
    return out


def computed_values(session: Session, assessment: Assessment) -> dict[str, Any]:
    """Values of computed criteria (shares of recognised members); a key is absent when it cannot be computed."""
    key = (assessment.subject_type, assessment.subject_id, assessment.year)
    return computed_many(session, {key})[key]


def score_assessment(session: Session, assessment: Assessment, sets: dict[str, CriteriaSet]) -> ScoreResult | None:
    cset = sets.get(assessment.title)
    if cset is None:
        return None
    needs_computed = any(c.computed for c in cset.criteria)
    return score(cset, assessment.answers or {}, computed_values(session, assessment) if needs_computed else None)


# A proposal is what lists and counts need of a score: (total, max, passed). Pages over a whole commune (dashboard,
# queue, export) need it for thousands of submissions on every view, so it is computed without the per-criterion
# reasons and remembered per (criteria set, answers as stored, computed values): a pure function of those.
Proposal = tuple[float, int, bool]
_PROPOSALS: dict[tuple[str, str, tuple[tuple[str, Any], ...]], Proposal] = {}
_PROPOSALS_MAX = 100_000  # ~40 MB at most: about ten communes of 5,000 families
_COMPILED: dict[int, tuple[CriteriaSet, str, tuple[tuple[Criterion, str, int, bool], ...]]] = {}
_MEMO_LOCK = threading.Lock()


def _compiled(cset: CriteriaSet) -> tuple[str, tuple[tuple[Criterion, str, int, bool], ...]]:
    """A fingerprint of the set's content and its criteria as (criterion, answer key, max points, mandatory)."""
    item = _COMPILED.get(id(cset))
    if item is None or item[0] is not cset:
        fingerprint = hashlib.sha256(repr(cset).encode()).hexdigest()
        mandatory = set(cset.pass_rule.mandatory)
        table = tuple((c, c.computed or c.id, c.max_points, c.id in mandatory) for c in cset.criteria)
        with _MEMO_LOCK:
            if len(_COMPILED) > 4096:
                _COMPILED.clear()
            _COMPILED[id(cset)] = item = (cset, fingerprint, table)  # keeps cset alive: its id stays unique
    return item[1], item[2]


def quick_proposal(cset: CriteriaSet, answers: dict[str, Any], computed: dict[str, Any] | None = None) -> Proposal:
    """(total, max, passed) exactly as flows.criteria.score computes them, without building the reasons."""
    _fp, table = _compiled(cset)
    computed = computed or {}
    rule = cset.pass_rule
    total: float = 0
    passed = True
    each = rule.min_points_each
    for criterion, key, top, mandatory in table:
        source = computed if criterion.computed else answers
        value = source.get(key)
        if key not in source or value is None:
            points: float = 0
        elif isinstance(value, str) and value == NA:
            points = top if criterion.not_applicable == "full" else 0
        elif _invalid_reason(criterion, value) is not None:
            points = 0
        else:
            points = _earned(criterion, value)
        total += points
        if (mandatory and points <= 0) or (each is not None and points < each):
            passed = False
    return total, cset.max_points, passed and total >= rule.min_points


def proposal(cset: CriteriaSet | None, answers_text: str | None, computed: dict[str, Any] | None = None
             ) -> Proposal | None:
    """The proposal for answers as stored (JSON text), remembered; None without a criteria set."""
    if cset is None:
        return None
    fingerprint, _table = _compiled(cset)
    text = answers_text or "{}"
    key = (fingerprint, text, tuple(sorted(computed.items())) if computed else ())
    found = _PROPOSALS.get(key)
    if found is None:
        loaded = json.loads(text)
        found = quick_proposal(cset, loaded if isinstance(loaded, dict) else {}, computed)
        with _MEMO_LOCK:
            if len(_PROPOSALS) >= _PROPOSALS_MAX:
                _PROPOSALS.clear()
            _PROPOSALS[key] = found
    return found


def answers_text() -> Any:
    """The answers column as the text it is stored as (no JSON decoding), for proposal()."""
    return cast(col(Assessment.answers), Text)


# The proposal of a submission whose criteria set has no computed criterion depends on its answers and the set only,
# so the dashboard stores it in Assessment.proposal as "fingerprint|total|max|passed" (fingerprint: the set's
# content, shortened) and later views read that short text instead of the answers. The unit of work empties the
# column whenever it saves an answer; the dashboard writes it only where the answers are still the text it scored.
_FP_LEN = 16
_KEEP_CHUNK = 2000


def stored_key(cset: CriteriaSet) -> str:
    return _compiled(cset)[0][:_FP_LEN]


def stored_proposal(cset: CriteriaSet | None, stored: str | None) -> Proposal | None:
    """The proposal kept in Assessment.proposal when it was computed with this very criteria set, else None."""
    if cset is None or not stored:
        return None
    parts = stored.split("|")
    if len(parts) != 4 or parts[0] != stored_key(cset):
        return None
    try:
        return float(parts[1]), int(parts[2]), parts[3] == "1"
    except ValueError:
        return None


def _stored_text(cset: CriteriaSet, found: Proposal) -> str:
    return f"{stored_key(cset)}|{float(found[0])!r}|{int(found[1])}|{int(bool(found[2]))}"


def live_titles(sets: dict[str, CriteriaSet]) -> set[str]:
    """Titles whose sets have computed criteria (shares of recognised members): always scored afresh."""
    return {title for title, cset in sets.items() if any(c.computed for c in cset.criteria)}


def stored_usable(sets: dict[str, CriteriaSet]) -> Any:
    """SQL: Assessment.proposal was computed with the title's criteria set as it is now, and the title is not
    one of live_titles. Never NULL."""
    stored = func.coalesce(col(Assessment.proposal), "")  # NULL would make the whole condition NULL
    live = live_titles(sets)
    fresh = [(col(Assessment.title) == title) & stored.startswith(stored_key(cset) + "|", autoescape=True)
             for title, cset in sets.items() if title not in live]
    return or_(*fresh) if fresh else false()


def answers_unless_stored(sets: dict[str, CriteriaSet]) -> Any:
    """The answers text of a submission (not a draft) whose stored proposal cannot be used, else NULL."""
    return case((and_(col(Assessment.status) != "draft", ~stored_usable(sets)), answers_text()), else_=None)


def keep_proposals(session: Session, rows: list[tuple[int, str, str]]) -> None:
    """Store (assessment id, answers text scored, proposal text) where the answers are still that text; a
    failure (the database busy with writers) only leaves them to be computed at the next view."""
    if not rows:
        return
    table = Assessment.__table__  # type: ignore[attr-defined]
    statement = (update(table).where(table.c.id == bindparam("b_id"), cast(table.c.answers, Text) == bindparam("b_text"))
                 .values(proposal=bindparam("b_proposal")))
    engine = session.get_bind()
    # on a connection of its own, in short transactions (the bot's writers take turns); the caller's read goes on
    for start in range(0, len(rows), _KEEP_CHUNK):
        chunk = rows[start:start + _KEEP_CHUNK]
        try:
            with write_lock(engine), Session(engine) as writer:
                writer.connection().execute(statement, [{"b_id": i, "b_text": text, "b_proposal": p}
                                                        for i, text, p in chunk])
                writer.commit()
        except OperationalError:
            log.info("proposals of %d submissions not stored (database busy)", len(rows) - start)
            return


def answer_label(criterion: Criterion, value: Any, present: bool) -> str:
    """An answer in plain words: Có / Không / Không áp dụng / 75% / the option's label."""
    if not present or value is None:
        return "Chưa trả lời"
    if value == "na":
        return "Không áp dụng"
    if criterion.answer == "yes_no" and isinstance(value, bool):
        return "Có" if value else "Không"
    if criterion.answer == "share" and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{format_number(value)}%"
    if criterion.answer == "choice":
        return next((o.label for o in criterion.options if o.value == value), str(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_number(value)
    return str(value)


# ------------------------------------------------------------------------------------------------ dashboard


@dataclass
class TitleRow:
    title: str
    name: str
    subjects: int
    registered: int
    submitted: int
    proposed: int
    recognised: int
    returned: int
    share: float | None
    target: float | None

    @property
    def reached(self) -> bool | None:
        if self.share is None or self.target is None:
            return None
        return self.share >= self.target

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "name": self.name, "subjects": self.subjects, "registered": self.registered,
                "submitted": self.submitted, "proposed": self.proposed, "recognised": self.recognised,
                "returned": self.returned, "share": self.share, "target": self.target, "reached": self.reached}


@dataclass
class VillageRow:
    village_id: int
    name: str
    households: int
    registered: int
    submitted: int
    proposed: int
    recognised: int
    returned: int
    unreachable: int
    confirmed_waiting: int
    share: float | None
    cong_dong: str  # the village's own status for cong_dong ("" when none)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Dashboard:
    commune_code: int
    commune_name: str
    year: int
    titles: list[TitleRow]
    villages: list[VillageRow]
    unreachable: list[dict[str, Any]] = field(default_factory=list)
    returned_total: int = 0
    not_submitted: int = 0
    pending_leaders: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"commune": {"code": self.commune_code, "name": self.commune_name}, "year": self.year,
                "titles": [r.to_json() for r in self.titles], "villages": [v.to_json() for v in self.villages],
                "blockers": {"unreachable": self.unreachable, "returned": self.returned_total,
                             "registered_not_submitted": self.not_submitted,
                             "pending_leaders": self.pending_leaders}}


def _count(session: Session, model: Any, *conds: Any) -> int:
    return int(session.exec(select(func.count()).select_from(model).where(*conds)).one())


def dashboard(session: Session, commune: Commune, year: int) -> Dashboard:
    """Figures for one commune and year: per title and per village, against the targets. Counted in SQL where
    the database can; proposals (score passed) from proposal(), over one pass of the year's submissions."""
    code = commune.code
    sets = criteria_for(commune)
    targets = targets_for(commune, year)
    villages = list(session.exec(select(Village).where(Village.commune_code == code).order_by(Village.name)))

    # the commune's households, once: their villages (for the submissions below, instead of a join that probed
    # the household table once per submission: 4,600 probes, ~17 ms on PostgreSQL) and per village how many there
    # are and how many heads are unreachable
    village_of: dict[int, int | None] = {}
    households_in: Counter[int | None] = Counter()
    unreachable_in: Counter[int | None] = Counter()
    for hid, vid, unreachable in session.connection().execute(
            select(Household.id, Household.village_id, Person.id)
            .outerjoin(Person, (col(Person.id) == Household.head_person_id) & (Person.commune_code == code)
                       & col(Person.unreachable_at).is_not(None))
            .where(Household.commune_code == code)):
        village_of[hid] = vid
        households_in[vid] += 1
        if unreachable is not None:
            unreachable_in[vid] += 1
    per_village_hh: dict[int | None, tuple[int, int]] = {
        vid: (n, unreachable_in[vid]) for vid, n in households_in.items()}
    registered_conds = (Registration.commune_code == code, Registration.year == year,
                        Registration.status == "registered")
    registered_by_title = {t_: int(n) for t_, n in session.exec(
        select(Registration.title, func.count(Registration.id)).where(*registered_conds).group_by(Registration.title))}
    registered_by_village = {vid: int(n) for vid, n in session.exec(
        select(Household.village_id, func.count(Registration.id))
        .join(Household, (col(Household.id) == Registration.subject_id) & (Household.commune_code == code))
        .where(*registered_conds, Registration.subject_type == "household", Registration.title == "gia_dinh")
        .group_by(Household.village_id))}
    submitted_same = (select(Assessment.id).where(
        Assessment.commune_code == code, Assessment.year == year, Assessment.status != "draft",
        col(Assessment.subject_type) == col(Registration.subject_type),
        col(Assessment.subject_id) == col(Registration.subject_id), col(Assessment.title) == col(Registration.title)))
    not_submitted = int(session.exec(select(func.count(Registration.id)).where(
        *registered_conds, ~submitted_same.exists())).one())

    # one pass over the year's submissions; households' villages joined for the per-village table
    # The year's submissions in two parts. Those with a usable stored proposal (nearly all, after the first view)
    # are counted in SQL, grouped by title, status and household village, with the stored verdicts summed; the
    # rest (drafts of villages' own files, computed titles, proposals not stored yet) come one by one, with their
    # answers where they must be scored.
    needs_computed = live_titles(sets)
    own_file = (col(Assessment.title) == "cong_dong") & (col(Assessment.subject_type) == "village")
    counted = and_(col(Assessment.status) != "draft", stored_usable(sets), ~own_file)
    of_year = (Assessment.commune_code == code, Assessment.year == year)
    # a household subject's village: that of the commune's household (None for other subjects, and for a
    # household not of this commune)
    # (grouped here, not by GROUP BY: PostgreSQL misjudges the filter's selectivity and sorts the rows by
    # collated text, three times the cost of reading them; Counter groups 10,000 short tuples in ~1 ms)
    groups = Counter(
        (title, kind, status, village_of.get(ident) if kind == "household" else None, passed)
        for title, kind, status, ident, passed in session.connection().execute(
            select(Assessment.title, Assessment.subject_type, Assessment.status, Assessment.subject_id,
                   col(Assessment.proposal).like("%|1")).where(*of_year, counted)))
    rows = [  # Core rows, fetched at once: no ORM processing of thousands of tuples
        (ident_a, title, kind, ident, status, text, village_of.get(ident) if kind == "household" else None, stored)
        for ident_a, title, kind, ident, status, text, stored in session.connection().execute(
            select(Assessment.id, Assessment.title, Assessment.subject_type, Assessment.subject_id,
                   Assessment.status, case((col(Assessment.status) != "draft", answers_text()), else_=None),
                   Assessment.proposal)
            .where(*of_year, ~counted, (col(Assessment.status) != "draft") | own_file))]
    # households of the commune's villages and of them with a recognised gia_dinh this year (one at most per
    # household: unique constraint), from the pass above, so computed_many need not count them again; the statuses
    # do not depend on computed values
    recognised_hh: Counter[int] = Counter()
    for (title, kind, status, village_id, _passed), n in groups.items():
        if title == "gia_dinh" and kind == "household" and status == "recognised" and village_id is not None:
            recognised_hh[village_id] += n
    for _id, title, kind, _ident, status, _text, village_id, _stored in rows:
        if title == "gia_dinh" and kind == "household" and status == "recognised" and village_id is not None:
            recognised_hh[village_id] += 1
    known_villages = {(v.id, year): (per_village_hh.get(v.id, (0, 0))[0], recognised_hh[v.id])
                      for v in villages if v.id is not None}
    computed = computed_many(session, {(kind, ident, year) for _id, t_, kind, ident, status, *_rest in rows
                                       if status != "draft" and t_ in needs_computed}, known_villages=known_villages)
    by_title: dict[str, Counter[str]] = defaultdict(Counter)
    by_village: dict[int, Counter[str]] = defaultdict(Counter)
    own_status: dict[int, str] = {}
    to_keep: list[tuple[int, str, str]] = []

    def add(title: str, kind: str, status: str, village_id: int | None, n: int, passed: int) -> None:
        counts = by_title[title]
        counts["submitted"] += n  # sent to the commune: any status but draft
        counts["status:" + status] += n
        counts["proposed"] += passed
        if title == "gia_dinh" and kind == "household" and village_id is not None:
            village = by_village[village_id]
            village["submitted"] += n
            village["status:" + status] += n
            village["proposed"] += passed

    for (title, kind, status, village_id, passed), n in groups.items():
        add(title, kind, status, village_id, n, n if passed else 0)
    for ident_a, title, kind, ident, status, text, village_id, stored in rows:
        if title == "cong_dong" and kind == "village":
            own_status.setdefault(ident, status)
        if status == "draft":
            continue
        cset = sets.get(title)
        if title in needs_computed:
            found = proposal(cset, text, computed.get((kind, ident, year)))
        else:
            found = proposal(cset, text)
            if cset is not None and found is not None and stored != (keep := _stored_text(cset, found)):
                to_keep.append((ident_a, text, keep))
        add(title, kind, status, village_id, 1, int(bool(found and found[2])))

    subjects = {
        "gia_dinh": sum(n for n, _u in per_village_hh.values()),
        "dong_ho": _count(session, Clan, Clan.commune_code == code),
        "cong_dong": sum(1 for v in villages if v.status == "active"),
        "don_vi": _count(session, Unit, Unit.commune_code == code),
        "cong_dan": 0,  # adults are not listed; the share is taken over registrations
    }
    titles: list[TitleRow] = []
    for title in TITLES:
        counts = by_title[title]
        registered = registered_by_title.get(title, 0)
        whole = subjects[title] or registered
        titles.append(TitleRow(
            title=title, name=sets[title].name if title in sets else title_name(title), subjects=subjects[title],
            registered=registered, submitted=counts["submitted"], proposed=counts["proposed"],
            recognised=counts["status:recognised"], returned=counts["status:returned"],
            share=_share(counts["status:recognised"], whole),
            target=targets.get(title)))

    unreachable_people = list(session.exec(select(Person).where(Person.commune_code == code,
                                                                col(Person.unreachable_at).is_not(None))))
    village_rows: list[VillageRow] = []
    for v in villages:
        households, unreachable = per_village_hh.get(v.id, (0, 0))
        counts = by_village[v.id or 0]
        own = own_status.get(v.id or 0)
        village_rows.append(VillageRow(
            village_id=v.id or 0, name=v.name, households=households,
            registered=registered_by_village.get(v.id, 0), submitted=counts["submitted"],
            proposed=counts["proposed"], recognised=counts["status:recognised"],
            returned=counts["status:returned"], unreachable=unreachable, confirmed_waiting=counts["status:confirmed"],
            share=_share(counts["status:recognised"], households),
            cong_dong=STATUS_LABELS.get(own, own) if own is not None else ""))

    names = {v.id or 0: v.name for v in villages}
    board = Dashboard(
        commune_code=code, commune_name=commune.name, year=year, titles=titles, villages=village_rows,
        unreachable=[{"person_id": p.id, "name": p.name, "village": names.get(p.village_id or 0, ""),
                      "since": aware(p.unreachable_at).isoformat() if p.unreachable_at else None,
                      "reason": p.unreachable_reason or ""} for p in unreachable_people],
        returned_total=sum(c["status:returned"] for c in by_title.values()),
        not_submitted=not_submitted,
        pending_leaders=_count(session, RoleGrant, RoleGrant.commune_code == code, RoleGrant.status == "pending"),
    )
    keep_proposals(session, to_keep)
    return board


def default_year(session: Session, communes: tuple[int, ...], now: datetime | None = None) -> int:
    """The latest year with assessments in these communes, else the current year."""
    latest = session.exec(select(func.max(Assessment.year)).where(col(Assessment.commune_code).in_(list(communes)))).one()
    return int(latest) if latest else (now or utcnow()).year


# ------------------------------------------------------------------------------------------------ queue


@dataclass
class QueueItem:
    id: int
    title: str
    title_name: str
    subject: str
    subject_type: str
    village_id: int | None
    village: str
    status: str
    status_label: str
    total: float | None
    max: int | None
    passed: bool | None
    proxy: bool
    submitted_at: datetime | None
    evidence: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "subject": self.subject, "subject_type": self.subject_type,
                "village_id": self.village_id, "village": self.village, "status": self.status,
                "total": self.total, "max": self.max, "proposed_pass": self.passed, "proxy": self.proxy,
                "submitted_at": self.submitted_at.isoformat() if self.submitted_at else None,
                "evidence": self.evidence}


def _village_of() -> Any:
    """SQL for the village a submission is listed under: its own, else its subject's (household, person, village)."""
    subject = col(Assessment.subject_id)
    return func.coalesce(col(Assessment.village_id), case(
        (col(Assessment.subject_type) == "household",
         select(Household.village_id).where(col(Household.id) == subject).scalar_subquery()),
        (col(Assessment.subject_type) == "person",
         select(Person.village_id).where(col(Person.id) == subject).scalar_subquery()),
        (col(Assessment.subject_type) == "village", select(Village.id).where(col(Village.id) == subject).scalar_subquery()),
        else_=None))


def _queue_conditions(communes: tuple[int, ...], year: int, title: str, village_id: int | None, state: str) -> list[Any]:
    statuses = QUEUE_STATES.get(state, QUEUE_STATES["pending"])
    conds = [col(Assessment.commune_code).in_(list(communes)), Assessment.year == year,
             col(Assessment.status).in_(statuses)]
    if title:
        conds.append(Assessment.title == title)
    if village_id is not None:
        conds.append(_village_of() == village_id)
    return conds


def queue_count(
    session: Session, communes: tuple[int, ...], *, year: int, title: str = "", village_id: int | None = None,
    state: str = "pending",
) -> int:
    """How many submissions queue() lists with these filters (counted in SQL)."""
    return int(session.exec(select(func.count(Assessment.id)).where(
        *_queue_conditions(communes, year, title, village_id, state))).one())


def queue(
    session: Session, communes: tuple[int, ...], *, year: int, title: str = "", village_id: int | None = None,
    state: str = "pending", limit: int | None = None, offset: int = 0,
) -> list[QueueItem]:
    """Submissions of these communes for a year, filtered; oldest first so nobody waits longest. ``limit`` and
    ``offset`` page through them in SQL (all of them by default)."""
    query = (select(Assessment, answers_text().label("answers_text")).where(*_queue_conditions(communes, year, title, village_id, state))
             .order_by(col(Assessment.submitted_at).asc(), col(Assessment.id).asc()))
    if limit is not None:
        query = query.limit(limit).offset(max(0, offset))
    rows = list(session.exec(query))
    infos = subject_infos(session, {(a.subject_type, a.subject_id) for a, _t in rows}, contacts=False)
    vnames = village_names(session, communes)
    evidence_counts: dict[int, int] = {}
    if rows:
        for aid, n in session.exec(select(Evidence.assessment_id, func.count()).where(
                col(Evidence.assessment_id).in_([a.id for a, _t in rows])).group_by(Evidence.assessment_id)):
            evidence_counts[aid] = int(n)
    communes_rows = {c.code: c for c in session.exec(select(Commune).where(col(Commune.code).in_(list(communes))))}
    computed = computed_many(session, {(a.subject_type, a.subject_id, a.year) for a, _t in rows
                                       if a.subject_type in ("clan", "village")})
    items: list[QueueItem] = []
    for a, text in rows:
        info = infos[(a.subject_type, a.subject_id)]
        vid = a.village_id or info.village_id
        cset = criteria_for(communes_rows[a.commune_code]).get(a.title)
        needs = cset is not None and any(c.computed for c in cset.criteria)
        result = None if needs else stored_proposal(cset, a.proposal)
        if result is None:
            result = proposal(cset, text, computed.get((a.subject_type, a.subject_id, a.year)) if needs else None)
        items.append(QueueItem(
            id=a.id or 0, title=a.title, title_name=title_name(a.title), subject=info.name,
            subject_type=a.subject_type, village_id=vid, village=vnames.get(vid or 0, ""), status=a.status,
            status_label=STATUS_LABELS.get(a.status, a.status), total=result[0] if result else a.total,
            max=result[1] if result else None, passed=result[2] if result else a.passed, proxy=a.proxy,
            submitted_at=aware(a.submitted_at), evidence=evidence_counts.get(a.id or 0, 0)))
    return items


# ------------------------------------------------------------------------------------------------ one submission


@dataclass
class CriterionLine:
    id: str
    group: str
    text: str
    answer: str
    points: float
    max: int
    met: bool
    state: str
    reason: str
    status: str
    evidence_rule: str
    photos: list[Evidence]


@dataclass
class SubmissionView:
    assessment: Assessment
    commune: Commune
    subject: str
    village: str
    title_name: str
    set_status: str
    pass_status: str
    version: str
    result: ScoreResult | None
    lines: list[CriterionLine]
    photos: list[Evidence]
    answered_by: str
    proxy_by: str
    confirmed_by: str
    decisions: list[dict[str, Any]]
    need_points: float | None
    has_draft: bool

    def to_json(self) -> dict[str, Any]:
        a = self.assessment
        return {
            "id": a.id, "commune_code": a.commune_code, "title": a.title, "year": a.year, "subject": self.subject,
            "subject_type": a.subject_type, "subject_id": a.subject_id, "village": self.village,
            "status": a.status, "criteria_version": self.version, "criteria_status": self.set_status,
            "pass_status": self.pass_status,
            "proposal": {"total": self.result.total, "max": self.result.max, "passed": self.result.passed,
                         "need": self.need_points, "reasons": list(self.result.failed_reasons)}
            if self.result else None,
            "criteria": [{"id": ln.id, "text": ln.text, "answer": ln.answer, "points": ln.points, "max": ln.max,
                          "met": ln.met, "state": ln.state, "reason": ln.reason, "status": ln.status,
                          "photos": [e.id for e in ln.photos]} for ln in self.lines],
            "entered_by": {"name": self.answered_by, "proxy": a.proxy, "proxy_by": self.proxy_by},
            "confirmation": {"by": self.confirmed_by,
                             "at": aware(a.confirmed_at).isoformat() if a.confirmed_at else None},
            "submitted_at": aware(a.submitted_at).isoformat() if a.submitted_at else None,
            "decisions": [{k: v for k, v in d.items() if k != "at_dt"} for d in self.decisions],
        }


def submission_view(session: Session, assessment: Assessment) -> SubmissionView:
    commune = session.get(Commune, assessment.commune_code)
    assert commune is not None
    sets = criteria_for(commune)
    cset = sets.get(assessment.title)
    result = score_assessment(session, assessment, sets)
    photos = list(session.exec(select(Evidence).where(Evidence.assessment_id == assessment.id).order_by(Evidence.id)))
    lines: list[CriterionLine] = []
    answers = assessment.answers or {}
    if cset is not None and result is not None:
        for c in cset.criteria:
            s = result.get(c.id)
            present = c.id in answers
            label = answer_label(c, answers.get(c.id), present)
            if c.computed:
                label = "Hệ thống tính" + ("" if s.state == "missing" else f": {s.points:g} điểm")
            lines.append(CriterionLine(c.id, c.group, c.text, label, s.points, s.max, s.met, s.state, s.reason,
                                       c.status, c.evidence, [e for e in photos if e.criterion == c.id]))
    info = subject_infos(session, {(assessment.subject_type, assessment.subject_id)})[
        (assessment.subject_type, assessment.subject_id)]
    decisions = list(session.exec(select(ReviewDecision).where(ReviewDecision.assessment_id == assessment.id)
                                  .order_by(col(ReviewDecision.created_at).desc(), col(ReviewDecision.id).desc())))
    officers = {o.id: o.name for o in session.exec(select(Officer).where(
        col(Officer.id).in_([d.officer_id for d in decisions if d.officer_id])))} if decisions else {}
    people = person_names(session, {assessment.answered_by or 0, assessment.proxy_by or 0, assessment.confirmed_by or 0})
    vid = assessment.village_id or info.village_id
    village = session.get(Village, vid) if vid else None
    return SubmissionView(
        assessment=assessment, commune=commune, subject=info.name, village=village.name if village else "",
        title_name=cset.name if cset else title_name(assessment.title),
        set_status=cset.status if cset else "draft", pass_status=cset.pass_rule.status if cset else "draft",
        version=cset.version if cset else "", result=result, lines=lines, photos=photos,
        answered_by=people.get(assessment.answered_by or 0, ""), proxy_by=people.get(assessment.proxy_by or 0, ""),
        confirmed_by=people.get(assessment.confirmed_by or 0, ""),
        decisions=[{"id": d.id, "decision": d.decision, "label": DECISION_LABELS.get(d.decision, d.decision),
                    "reason": d.reason, "officer": officers.get(d.officer_id, ""),
                    "at": aware(d.created_at).isoformat() if d.created_at else None,
                    "at_dt": aware(d.created_at)} for d in decisions],
        need_points=cset.pass_rule.min_points if cset else None,
        has_draft=bool(cset and (cset.status == "draft" or cset.pass_rule.status == "draft"
                                 or any(c.status == "draft" for c in cset.criteria))),
    )


# ------------------------------------------------------------------------------------------------ decisions


def _chat_for(session: Session, person_ids: tuple[int, ...] | list[int]) -> tuple[ChatIdentity, int] | None:
    for pid in person_ids:
        if not pid:
            continue
        ident = session.exec(select(ChatIdentity).where(ChatIdentity.person_id == pid)
                             .order_by(col(ChatIdentity.id).desc())).first()
        if ident is not None:
            return ident, pid
    return None


def notify_decision(session: Session, assessment: Assessment, decision: ReviewDecision, now: datetime) -> OutboxMessage | None:
    """Queue the decision for the family (or whoever answers for them) in chat; None when nobody can be reached."""
    info = subject_infos(session, {(assessment.subject_type, assessment.subject_id)})[
        (assessment.subject_type, assessment.subject_id)]
    own = list(info.person_ids)
    found = _chat_for(session, own)
    on_behalf = False
    if found is None and assessment.proxy_by:  # a family without a phone hears it through the village leader
        found = _chat_for(session, [assessment.proxy_by])
        on_behalf = found is not None
    if found is None:
        return None
    ident, person_id = found
    values = {"title": title_name(assessment.title), "year": assessment.year, "reason": decision.reason,
              "subject": info.name}
    key = {"return": "review.returned", "reject": "review.rejected", "recognise": "review.recognised"}[decision.decision]
    text = t(key + ("_for" if on_behalf else ""), **values)
    buttons = [{"label": t("review.button_status"), "value": "cmd:trangthai"}]
    if decision.decision == "return":
        buttons.insert(0, {"label": t("review.button_send_photo"), "value": "cmd:bosung"})
    message = OutboxMessage(
        idempotency_key=f"decision:{decision.id}", channel=ident.channel, chat_id=ident.chat_id,
        person_id=person_id, payload={"text": text, "buttons": buttons, "request_contact": False}, priority=0,
        not_before=now, created_at=now)
    session.add(message)
    return message


def record_decision(
    session: Session, assessment: Assessment, *, officer: Officer, decision: str, reason: str = "",
    now: datetime | None = None,
) -> ReviewDecision:
    """Append a decision, set the assessment's status to it and queue the message for the family."""
    now = now or utcnow()
    reason = (reason or "").replace("\x00", "").strip()  # PostgreSQL refuses a NUL in text
    if decision not in DECISIONS:
        raise ReviewError("Quyết định không hợp lệ.")
    if decision in ("return", "reject") and not reason:
        raise ReviewError("Cần ghi lý do để gia đình biết phải làm gì.")
    if len(reason) > 500:
        raise ReviewError("Lý do dài quá 500 ký tự.")
    if assessment.status == "draft":
        raise ReviewError("Hồ sơ chưa được gửi, chưa xét được.")
    row = ReviewDecision(assessment_id=assessment.id or 0, decision=decision, reason=reason,
                         officer_id=officer.id, created_at=now)
    session.add(row)
    assessment.status = DECISIONS[decision]
    assessment.updated_at = now
    session.add(assessment)
    session.flush()
    session.add(AuditLog(at=now, actor=f"officer:{officer.id}", action=f"decision_{decision}",
                         target=f"assessment:{assessment.id}", detail={"decision_id": row.id}))
    notify_decision(session, assessment, row, now)
    return row


def bulk_candidates(session: Session, commune: Commune, village_id: int, year: int, title: str = "gia_dinh"
                    ) -> tuple[list[QueueItem], list[QueueItem]]:
    """A village's submissions confirmed by its leader: (proposed to pass, not passing — left for one by one)."""
    items = [i for i in queue(session, (commune.code,), year=year, title=title, village_id=village_id, state="pending")
             if i.status == "confirmed"]
    return [i for i in items if i.passed], [i for i in items if not i.passed]


# ------------------------------------------------------------------------------------------------ villages


def new_invite_code(session: Session) -> str:
    alphabet = string.ascii_lowercase + string.digits
    while True:
        code = "".join(secrets.choice(alphabet) for _ in range(8))
        if session.exec(select(Village).where(Village.invite_code == code)).first() is None:
            return code


def _fold(text: str) -> str:
    from flows.answers import fold

    return fold(text)


_COLUMNS = {"thon": "village", "thon/to dan pho": "village", "to dan pho": "village", "chu ho": "head",
            "so nhan khau": "members", "dien thoai": "phone", "so dien thoai": "phone"}


@dataclass
class ImportReport:
    villages_created: list[str] = field(default_factory=list)
    households_created: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: int = 0


def import_villages(session: Session, commune_code: int, data: bytes) -> ImportReport:
    """Villages (and households) from the first sheet of an XLSX: a bad row is reported by number, good rows kept."""
    from openpyxl import load_workbook

    report = ImportReport()
    try:
        wb = load_workbook(BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer for the officer
        raise ReviewError("Không đọc được tệp. Anh/Chị chọn một tệp Excel (.xlsx).") from exc
    ws = wb.worksheets[0]
    rows = ws.iter_rows(values_only=True)
    header = next(rows, None) or ()
    columns: dict[str, int] = {}
    for index, cell in enumerate(header):
        name = _COLUMNS.get(_fold(str(cell or "")).strip())
        if name and name not in columns:
            columns[name] = index
    if "village" not in columns:
        raise ReviewError("Dòng 1 cần có cột \"Thôn\".")
    existing = {_fold(v.name): v for v in session.exec(select(Village).where(Village.commune_code == commune_code))}
    heads = {(h.village_id, _fold(h.head_name)) for h in session.exec(
        select(Household).where(Household.commune_code == commune_code))}

    def cell(row: tuple[Any, ...], name: str) -> Any:
        index = columns.get(name)
        value = row[index] if index is not None and index < len(row) else None
        return value.strip() if isinstance(value, str) else value

    for number, row in enumerate(rows, start=2):
        if not any(v not in (None, "") for v in row):
            continue
        village_name = str(cell(row, "village") or "").strip()
        head = str(cell(row, "head") or "").strip()
        if not village_name:
            report.errors.append(f"Dòng {number}: thiếu tên thôn.")
            continue
        members_raw = cell(row, "members")
        members = 1
        if members_raw not in (None, ""):
            try:
                members = int(str(members_raw).strip())
                if isinstance(members_raw, float) and not members_raw.is_integer():
                    raise ValueError
            except ValueError:
                report.errors.append(f"Dòng {number}: số nhân khẩu \"{members_raw}\" không phải số nguyên.")
                continue
            if not 1 <= members <= 50:
                report.errors.append(f"Dòng {number}: số nhân khẩu {members} phải từ 1 đến 50.")
                continue
        phone_raw = cell(row, "phone")
        phone = None
        if phone_raw not in (None, ""):
            phone_text = str(int(phone_raw)) if isinstance(phone_raw, float | int) else str(phone_raw)
            if isinstance(phone_raw, float | int) and not phone_text.startswith("0") and len(phone_text) == 9:
                phone_text = "0" + phone_text  # Excel drops the leading zero of a number cell
            phone = normalize_phone(phone_text)
            if phone is None:
                report.errors.append(f"Dòng {number}: số điện thoại \"{phone_raw}\" không đúng.")
                continue
        if not head and (members_raw not in (None, "") or phone):
            report.errors.append(f"Dòng {number}: có số nhân khẩu hoặc điện thoại nhưng thiếu tên chủ hộ.")
            continue
        village = existing.get(_fold(village_name))
        if village is None:
            village = Village(commune_code=commune_code, name=village_name, invite_code=new_invite_code(session))
            session.add(village)
            session.flush()
            existing[_fold(village_name)] = village
            report.villages_created.append(village_name)
        if head:
            if (village.id, _fold(head)) in heads:
                report.skipped += 1
                continue
            session.add(Household(commune_code=commune_code, village_id=village.id, head_name=head, members=members,
                                   phone=phone, has_phone=phone is not None))
            heads.add((village.id, _fold(head)))
            report.households_created += 1
    session.flush()
    return report


def villages_import_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hoctap villages import FILE.xlsx --commune CODE`."""
    engine = make_engine(settings.db_url)
    try:
        data = Path(args.file).read_bytes()
        with session_scope(engine) as session:
            ensure_commune(session, args.commune)
            report = import_villages(session, args.commune, data)
    except (OSError, ReviewError) as exc:
        print(f"Lỗi: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"Thêm {len(report.villages_created)} thôn, {report.households_created} hộ"
          f"{f', bỏ qua {report.skipped} hộ đã có' if report.skipped else ''}.")
    for error in report.errors:
        print(error, file=sys.stderr)
    return 1 if report.errors else 0


def pending_grants(session: Session, communes: tuple[int, ...]) -> list[dict[str, Any]]:
    grants = list(session.exec(select(RoleGrant).where(col(RoleGrant.commune_code).in_(list(communes)),
                                                       RoleGrant.status == "pending").order_by(RoleGrant.id)))
    names = person_names(session, {g.person_id for g in grants})
    phones = {p.id: p.phone for p in session.exec(select(Person).where(col(Person.id).in_([g.person_id for g in grants])))} \
        if grants else {}
    vnames = village_names(session, communes)
    role_names = {"village_leader": "Trưởng thôn / Chi hội", "officer": "Cán bộ xã", "clan_head": "Trưởng dòng họ",
                  "unit_rep": "Đại diện đơn vị", "household": "Chủ hộ"}
    return [{"id": g.id, "person": names.get(g.person_id, ""), "phone": phones.get(g.person_id) or "",
             "role": g.role, "role_label": role_names.get(g.role, g.role), "village": vnames.get(g.village_id or 0, ""),
             "created_at": aware(g.created_at)} for g in grants]


def decide_grant(session: Session, grant: RoleGrant, *, officer: Officer, grant_it: bool, now: datetime) -> None:
    grant.status = "granted" if grant_it else "revoked"
    grant.decided_at = now
    grant.granted_by = officer.person_id
    session.add(grant)
    if grant_it and grant.village_id:
        village = session.get(Village, grant.village_id)
        if village is not None and village.status == "pending":
            village.status = "active"
            session.add(village)
    session.add(AuditLog(at=now, actor=f"officer:{officer.id}", action="role_granted" if grant_it else "role_refused",
                         target=f"rolegrant:{grant.id}"))


# ------------------------------------------------------------------------------------------------ export CLI


def export_command(settings: Settings, args: argparse.Namespace) -> int:
    """`hoctap export --commune CODE --year Y --out DIR_OR_FILE.xlsx`."""
    from webhook.exports import export_filename, export_workbook

    engine = make_engine(settings.db_url)
    try:
        with session_scope(engine) as session:
            commune = session.get(Commune, args.commune)
            if commune is None:
                print(f"Lỗi: chưa có xã mã {args.commune} trong cơ sở dữ liệu.", file=sys.stderr)
                return 2
            data = export_workbook(session, commune, args.year)
    finally:
        engine.dispose()
    out = Path(args.out)
    path = out if out.suffix.lower() == ".xlsx" else out / export_filename(commune, args.year)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"Đã ghi {path}")
    return 0
