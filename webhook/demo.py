"""The demo commune: seeded on the first `hoctap serve` of an empty install, reset with `hoctap demo reset`.

Everything seeded here is marked: the commune has ``is_demo=True`` and pages show "(demo)". The demo
people are reachable in the browser simulator as web chats (``demo-family``, ``demo-leader``...).
"""

from __future__ import annotations

import io
import logging
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session

from flows.criteria import CriteriaSet, load_sets, score
from models.settings import Settings
from models.tables import (
    Assessment,
    AuditLog,
    CampaignYear,
    ChatIdentity,
    Clan,
    ClanMember,
    Commune,
    Conversation,
    Evidence,
    Household,
    InboxUpdate,
    LoginToken,
    Officer,
    OfficerCommune,
    OutboxMessage,
    Person,
    Province,
    Registration,
    ReviewDecision,
    RoleGrant,
    Unit,
    Village,
)

DEMO_COMMUNE_CODE = 10999  # Xã Gia Lộc, Hải Phòng (vietnam-provinces)
DEMO_PROVINCE_CODE = 31
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo"  # shown on the home page in demo mode only
TZ = ZoneInfo("Asia/Ho_Chi_Minh")
log = logging.getLogger("hoctap.demo")


@dataclass(frozen=True)
class Persona:
    """A seeded demo person the simulator can speak as (a web chat of its own)."""

    chat_id: str
    label: str
    role: str


PERSONAS: tuple[Persona, ...] = (
    Persona("demo-family", "Chủ hộ Nguyễn Văn An", "household"),
    Persona("demo-returned", "Chủ hộ Hoàng Văn Em (bị trả lại)", "household"),
    Persona("demo-clan", "Trưởng họ Nguyễn Văn Bảo", "clan_head"),
    Persona("demo-leader", "Trưởng thôn Phạm Văn Đức", "village_leader"),
    Persona("demo-officer", "Cán bộ xã Ngô Thị Hạnh", "officer"),
)

VILLAGES = (
    ("Thôn Phú Lộc", "demophuloc"),
    ("Thôn Đông Cận", "demodongcan"),
    ("Thôn Lạc Thượng", "demolacthuong"),
)

TARGETS = {"gia_dinh": 70, "dong_ho": 60, "cong_dong": 60, "don_vi": 70, "cong_dan": 50}


def campaign_year(now: datetime) -> int:
    """The campaign year: the calendar year in Asia/Ho_Chi_Minh."""
    return now.astimezone(TZ).year


def _vn(day: date, hour: int = 9) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=TZ).astimezone(UTC)


# ---------------------------------------------------------------------------------------------- photos


def _demo_jpeg(seed: int, *, label: str) -> bytes:
    """A small real JPEG: a bookshelf of coloured spines, different for each seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)  # noqa: S311 - pictures, not secrets
    img = Image.new("RGB", (640, 480), (236, 224, 200))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 40, 600, 440), fill=(120, 84, 50))
    for shelf_top in (60, 190, 320):
        x = 60
        while x < 570:
            width = rng.randint(14, 34)
            height = rng.randint(80, 115)
            colour = (rng.randint(40, 230), rng.randint(40, 230), rng.randint(40, 230))
            draw.rectangle((x, shelf_top + 120 - height, x + width, shelf_top + 120), fill=colour)
            x += width + rng.randint(2, 6)
        draw.rectangle((50, shelf_top + 120, 590, shelf_top + 128), fill=(90, 60, 35))
    draw.rectangle((0, 448, 640, 480), fill=(255, 255, 255))
    draw.text((12, 456), f"hoctap demo - {label}", fill=(20, 20, 20))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=80)
    return out.getvalue()


def store_photo(data: bytes, settings: Settings) -> dict[str, Any]:
    """Store a JPEG exactly as uploads are stored (bot.media); returns the Evidence fields."""
    from bot.media import store_photo as store

    media_dir = settings.media_path
    media_dir.mkdir(parents=True, exist_ok=True)
    # our own small JPEGs: the deployment's upload limits do not apply to them
    stored = store(data, media_dir=media_dir, max_bytes=10 * 1024 * 1024, max_pixels=40_000_000)
    if isinstance(stored, str):  # pragma: no cover - a 640×480 JPEG we just made
        raise ValueError(f"demo photo refused: {stored}")
    return {"sha256": stored.ref.sha256, "path": stored.path, "thumb_path": stored.thumb_path,
            "width": stored.ref.width, "height": stored.ref.height, "size_bytes": stored.size_bytes}


# ---------------------------------------------------------------------------------------------- answers


def _answers(cset: CriteriaSet, *, quality: str, rng: random.Random, upto: int | None = None) -> dict[str, Any]:
    """Plausible answers for every non-computed criterion: "good" passes, "weak" misses a few."""
    answers: dict[str, Any] = {}
    for index, c in enumerate(cset.criteria):
        if upto is not None and index >= upto:
            break
        if c.computed:
            continue
        miss = quality == "weak" and c.id not in cset.pass_rule.mandatory and rng.random() < 0.45
        if c.answer == "yes_no":
            answers[c.id] = not miss
        elif c.answer == "choice":
            answers[c.id] = c.options[-1].value if miss else c.options[0].value
        elif c.answer == "share":
            answers[c.id] = 30 if miss else 100
        else:  # number
            top = max(c.tiers, key=lambda t: t.points).min
            answers[c.id] = 0 if miss else int(top)
        if c.not_applicable == "full" and not miss and rng.random() < 0.2:
            answers[c.id] = "na"
    return answers


# ---------------------------------------------------------------------------------------------- seeding


@dataclass
class _Seeder:
    session: Session
    settings: Settings
    now: datetime
    sets: dict[str, CriteriaSet]
    officer: Officer | None = None
    officer_person: Person | None = None
    photo_seed: int = 0

    @property
    def year(self) -> int:
        return campaign_year(self.now)

    def add(self, row: Any) -> Any:
        self.session.add(row)
        self.session.flush()
        return row

    def person(self, name: str, phone: str, village: Village | None, *, chat_id: str | None = None) -> Person:
        person = self.add(Person(name=name, phone=phone, commune_code=DEMO_COMMUNE_CODE,
                                 village_id=village.id if village else None, consent_at=self.now - timedelta(days=300)))
        if chat_id:
            self.add(ChatIdentity(channel="web", user_id=chat_id, chat_id=chat_id, person_id=person.id,
                                  display_name=name))
        return person

    def grant(self, person: Person, role: str, village: Village | None = None) -> None:
        self.add(RoleGrant(person_id=person.id, role=role, status="granted", commune_code=DEMO_COMMUNE_CODE,
                           village_id=village.id if village else None,
                           decided_at=self.now - timedelta(days=300)))

    def register(self, subject_type: str, subject_id: int, title: str, year: int, by: Person | None) -> None:
        self.add(Registration(commune_code=DEMO_COMMUNE_CODE, subject_type=subject_type, subject_id=subject_id,
                              title=title, year=year, registered_by=by.id if by else None,
                              created_at=_vn(date(year, 1, 12))))

    def assess(self, *, subject_type: str, subject_id: int, title: str, year: int, status: str,
               village: Village | None, by: Person | None, quality: str = "good", upto: int | None = None,
               computed: dict[str, Any] | None = None, photos: int = 0, proxy_by: Person | None = None,
               note: str = "") -> Assessment:
        cset = self.sets[title]
        rng = random.Random(f"{title}:{subject_type}:{subject_id}:{year}")  # noqa: S311
        answers = _answers(cset, quality=quality, rng=rng, upto=upto)
        result = score(cset, answers, computed or {})
        submitted = status != "draft"
        when = _vn(date(year, 11, 10)) if year < self.year else self.now - timedelta(days=rng.randint(2, 12))
        row = self.add(Assessment(
            commune_code=DEMO_COMMUNE_CODE, village_id=village.id if village else None,
            subject_type=subject_type, subject_id=subject_id, title=title, year=year,
            criteria_version=cset.version, answers=answers, status=status,
            answered_by=(proxy_by or by).id if (proxy_by or by) else None,
            proxy=proxy_by is not None, proxy_by=proxy_by.id if proxy_by else None,
            total=result.total, passed=result.passed if submitted else None,
            submitted_at=when if submitted else None, created_at=when - timedelta(days=1), updated_at=when,
        ))
        if status in ("confirmed", "in_review", "returned", "recognised", "rejected") and village is not None:
            leader = self._leader_of(village)
            if leader is not None:
                row.confirmed_by, row.confirmed_at = leader.id, when + timedelta(days=1)
        wanted = sorted((c for c in cset.criteria if c.evidence != "none"), key=lambda c: c.evidence != "required")
        required = sum(1 for c in wanted if c.evidence == "required")
        for criterion in wanted[:max(photos, required if submitted else 0)]:
            self.photo(row, criterion.id, by)
        decision = {"in_review": "review_started", "returned": "return", "recognised": "recognise",
                    "rejected": "reject"}.get(status)
        if decision and self.officer is not None:
            if decision != "review_started":
                self.add(ReviewDecision(assessment_id=row.id, decision="review_started", officer_id=self.officer.id,
                                        created_at=when + timedelta(days=2)))
            self.add(ReviewDecision(assessment_id=row.id, decision=decision, reason=note, officer_id=self.officer.id,
                                    created_at=when + timedelta(days=3)))
        self.session.add(row)
        return row

    def photo(self, assessment: Assessment, criterion: str, by: Person | None) -> None:
        self.photo_seed += 1
        data = _demo_jpeg(self.photo_seed, label=f"{assessment.title} {criterion}")
        fields = store_photo(data, self.settings)
        self.add(Evidence(assessment_id=assessment.id, criterion=criterion, sent_by=by.id if by else None,
                          taken_at=(assessment.updated_at - timedelta(days=1)).isoformat(), **fields))

    def _leader_of(self, village: Village) -> Person | None:
        grant = self.session.exec(  # type: ignore[call-overload]
            select(RoleGrant).where(RoleGrant.role == "village_leader", RoleGrant.village_id == village.id)
        ).scalars().first()
        return self.session.get(Person, grant.person_id) if grant else None


def _hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def seed_demo(session: Session, settings: Settings, now: datetime) -> Commune:
    """Seed the demo commune into ``session`` (flushes, does not commit)."""
    sets = load_sets()
    s = _Seeder(session=session, settings=settings, now=now, sets=sets)
    year, last = s.year, s.year - 1

    if session.get(Province, DEMO_PROVINCE_CODE) is None:
        s.add(Province(code=DEMO_PROVINCE_CODE, name=_official_province_name()))
    commune = s.add(Commune(
        code=DEMO_COMMUNE_CODE, name=_official_commune_name(), province_code=DEMO_PROVINCE_CODE, is_demo=True,
        targets={str(last): dict(TARGETS), str(year): {k: v + 5 for k, v in TARGETS.items()}},
    ))
    versions = {title: cset.version for title, cset in sets.items()}
    for y in (last, year):
        s.add(CampaignYear(commune_code=DEMO_COMMUNE_CODE, year=y, registration_deadline=_vn(date(y, 1, 31), 23),
                           assessment_deadline=_vn(date(y, 11, 30), 23), criteria_versions=versions))
    phu_loc, dong_can, lac_thuong = (
        s.add(Village(commune_code=DEMO_COMMUNE_CODE, name=name, invite_code=code)) for name, code in VILLAGES
    )

    # officer first: decisions point at it
    officer_person = s.person("Ngô Thị Hạnh", "+84900000100", None, chat_id="demo-officer")
    s.grant(officer_person, "officer")
    s.officer = s.add(Officer(username=DEMO_USERNAME, name="Ngô Thị Hạnh (demo)", phone=officer_person.phone,
                              password_hash=_hash_password(DEMO_PASSWORD), person_id=officer_person.id))
    s.add(OfficerCommune(officer_id=s.officer.id, commune_code=DEMO_COMMUNE_CODE))

    leader = s.person("Phạm Văn Đức", "+84900000101", dong_can, chat_id="demo-leader")
    s.grant(leader, "village_leader", dong_can)
    s.grant(leader, "household")
    leader_phuloc = s.person("Lê Thị Mai", "+84900000102", phu_loc)
    s.grant(leader_phuloc, "village_leader", phu_loc)

    # (name, village, chat persona, state this year, quality, photos, last year recognised, note)
    families: list[tuple[str, Village, str | None, str, str, int, bool, str]] = [
        ("Nguyễn Văn An", phu_loc, "demo-family", "draft", "good", 0, True, ""),
        ("Nguyễn Văn Bảo", phu_loc, "demo-clan", "submitted", "good", 1, True, ""),
        ("Trần Thị Bình", phu_loc, None, "registered", "good", 0, False, ""),
        ("Lê Văn Cường", phu_loc, None, "submitted", "good", 2, True, ""),
        ("Nguyễn Thị Cúc", phu_loc, None, "recognised", "good", 2, True, ""),
        ("Phạm Văn Đức", dong_can, None, "confirmed", "good", 1, True, ""),
        ("Phạm Thị Dung", dong_can, None, "confirmed", "good", 2, False, ""),
        ("Hoàng Văn Em", dong_can, "demo-returned", "returned", "good", 1, False,
         "Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn."),
        ("Hoàng Thị Hoa", dong_can, None, "submitted", "good", 1, False, ""),
        ("Vũ Thị Gấm", dong_can, None, "recognised", "good", 2, True, ""),
        ("Đỗ Văn Hùng", lac_thuong, None, "in_review", "good", 1, True, ""),
        ("Bùi Thị Lan", lac_thuong, None, "rejected", "weak", 0, False,
         "Gia đình chưa đạt tiêu chí về góc học tập, năm sau cố gắng thêm."),
        ("Trịnh Văn Khoa", lac_thuong, None, "draft", "weak", 0, False, ""),
        ("Đinh Thị Nga", lac_thuong, None, "none", "good", 0, False, ""),
    ]
    households: dict[str, Household] = {}
    for index, (name, village, chat_id, state, quality, photos, last_ok, note) in enumerate(families):
        head = leader if name == leader.name else s.person(name, f"+8490000{index + 200:04d}", village, chat_id=chat_id)
        if head is not leader:
            s.grant(head, "household")
        if chat_id == "demo-clan":
            s.grant(head, "clan_head")
        proxy = name == "Đỗ Văn Hùng"  # a family without a phone: the village leader answers for them
        hh = s.add(Household(commune_code=DEMO_COMMUNE_CODE, village_id=village.id, head_person_id=head.id,
                             head_name=name, members=3 + index % 4, phone=None if proxy else head.phone,
                             has_phone=not proxy))
        households[name] = hh
        if last_ok:
            s.register("household", hh.id, "gia_dinh", last, head)
            s.assess(subject_type="household", subject_id=hh.id, title="gia_dinh", year=last, status="recognised",
                     village=village, by=head)
        if state == "none":
            continue
        s.register("household", hh.id, "gia_dinh", year, head)
        if state == "registered":
            continue
        s.assess(subject_type="household", subject_id=hh.id, title="gia_dinh", year=year, status=state,
                 village=village, by=head, quality=quality, upto=3 if state == "draft" else None,
                 photos=photos, proxy_by=leader_phuloc if proxy else None, note=note)

    # a clan spanning two villages, headed by the demo clan head
    clan_head = s.session.get(Person, households["Nguyễn Văn Bảo"].head_person_id)
    clan = s.add(Clan(commune_code=DEMO_COMMUNE_CODE, name="Họ Nguyễn Văn Phú Lộc", head_person_id=clan_head.id))
    for name in ("Nguyễn Văn Bảo", "Nguyễn Văn An", "Nguyễn Thị Cúc", "Lê Văn Cường", "Vũ Thị Gấm"):
        s.add(ClanMember(clan_id=clan.id, household_id=households[name].id))
    s.register("clan", clan.id, "dong_ho", last, clan_head)
    s.assess(subject_type="clan", subject_id=clan.id, title="dong_ho", year=last, status="recognised", village=None,
             by=clan_head, computed={"member_households_recognised": 80}, photos=1)
    s.register("clan", clan.id, "dong_ho", year, clan_head)
    s.assess(subject_type="clan", subject_id=clan.id, title="dong_ho", year=year, status="draft", village=None,
             by=clan_head, upto=3)

    # villages (Cộng đồng học tập) and a school (Đơn vị học tập)
    s.register("village", phu_loc.id, "cong_dong", last, leader_phuloc)
    s.assess(subject_type="village", subject_id=phu_loc.id, title="cong_dong", year=last, status="recognised",
             village=phu_loc, by=leader_phuloc,
             computed={"village_households_recognised": 75, "village_clans_recognised": 100}, photos=1)
    s.register("village", dong_can.id, "cong_dong", year, leader)
    s.assess(subject_type="village", subject_id=dong_can.id, title="cong_dong", year=year, status="submitted",
             village=dong_can, by=leader,
             computed={"village_households_recognised": 40, "village_clans_recognised": "na"}, photos=1)
    school = s.add(Unit(commune_code=DEMO_COMMUNE_CODE, name="Trường Tiểu học Gia Lộc", kind="school", staff=32))
    s.register("unit", school.id, "don_vi", year, None)
    s.assess(subject_type="unit", subject_id=school.id, title="don_vi", year=year, status="submitted", village=None,
             by=None, photos=1)
    s.add(AuditLog(actor="system", action="demo.seed", target=f"commune:{DEMO_COMMUNE_CODE}",
                   detail={"year": year}))
    session.flush()
    return commune


def _official_commune_name() -> str:
    try:
        from vietnam_provinces import Ward

        for ward in Ward.iter_all():
            if int(ward.code) == DEMO_COMMUNE_CODE:
                return str(ward.name)
    except ImportError:
        pass
    return "Xã Gia Lộc"


def _official_province_name() -> str:
    try:
        from vietnam_provinces import Province as VnProvince

        for province in VnProvince.iter_all():
            if int(province.code) == DEMO_PROVINCE_CODE:
                return str(province.name)
    except ImportError:
        pass
    return "Thành phố Hải Phòng"


# ---------------------------------------------------------------------------------------------- public API


def demo_commune(session: Session) -> Commune | None:
    """The demo commune, when seeded."""
    return session.exec(select(Commune).where(Commune.is_demo.is_(True))).scalars().first()  # type: ignore[call-overload, attr-defined]


def has_real_commune(session: Session) -> bool:
    return session.exec(select(Commune.code).where(Commune.is_demo.is_(False))).first() is not None  # type: ignore[call-overload, attr-defined]


def ensure_demo(engine: Engine, settings: Settings, now: datetime | None = None) -> bool:
    """Seed the demo commune on an empty install; True when it seeded something."""
    now = now or datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as session:
        if has_real_commune(session) or demo_commune(session) is not None:
            return False
        if session.get(Commune, DEMO_COMMUNE_CODE) is not None:
            return False
        try:
            seed_demo(session, settings, now)
            session.commit()
        except IntegrityError:  # another serve process seeded it at the same moment
            session.rollback()
            return False
        except SQLAlchemyError:
            # the demo is a convenience: a failure must not keep `hoctap serve` from starting
            session.rollback()
            log.exception("demo: the demo commune could not be seeded (try `hoctap demo reset`)")
            return False
    return True


def _ids(session: Session, stmt: Any) -> list[Any]:
    return [row for row in session.exec(stmt).scalars().all() if row is not None]  # type: ignore[call-overload]


def _in(column: Any, values: Iterable[Any]) -> Any:
    values = list(values)
    return column.in_(values) if values else column.in_([-1])


def delete_demo(session: Session) -> int:
    """Delete the demo commune and everything hanging from it, children first; returns rows deleted."""
    commune = demo_commune(session)
    if commune is None:
        return 0
    code = commune.code
    village_ids = _ids(session, select(Village.id).where(Village.commune_code == code))
    person_ids = set(_ids(session, select(Person.id).where(
        or_(Person.commune_code == code, _in(Person.village_id, village_ids)))))
    person_ids |= set(_ids(session, select(RoleGrant.person_id).where(RoleGrant.commune_code == code)))
    household_ids = _ids(session, select(Household.id).where(Household.commune_code == code))
    clan_ids = _ids(session, select(Clan.id).where(Clan.commune_code == code))
    assessment_ids = _ids(session, select(Assessment.id).where(Assessment.commune_code == code))
    scoped = _ids(session, select(OfficerCommune.officer_id).where(OfficerCommune.commune_code == code))
    elsewhere = set(_ids(session, select(OfficerCommune.officer_id).where(
        _in(OfficerCommune.officer_id, scoped), OfficerCommune.commune_code != code)))
    officer_ids = [oid for oid in scoped if oid not in elsewhere]
    person_ids |= set(_ids(session, select(Officer.person_id).where(_in(Officer.id, officer_ids))))
    # web chats of demo people, and web chats that never finished signing up (they may point at demo rows)
    identities = session.exec(select(ChatIdentity).where(  # type: ignore[call-overload]
        or_(_in(ChatIdentity.person_id, person_ids),
            (ChatIdentity.channel == "web") & ChatIdentity.person_id.is_(None)))).scalars().all()  # type: ignore[union-attr]
    identity_ids = [i.id for i in identities]
    web_chats = [i.chat_id for i in identities if i.channel == "web"]

    statements = [
        delete(ReviewDecision).where(or_(_in(ReviewDecision.assessment_id, assessment_ids),
                                         _in(ReviewDecision.officer_id, officer_ids))),
        delete(Evidence).where(_in(Evidence.assessment_id, assessment_ids)),
        delete(Assessment).where(_in(Assessment.id, assessment_ids)),
        delete(Registration).where(Registration.commune_code == code),
        delete(CampaignYear).where(CampaignYear.commune_code == code),
        delete(ClanMember).where(or_(_in(ClanMember.clan_id, clan_ids), _in(ClanMember.household_id, household_ids))),
        delete(Clan).where(_in(Clan.id, clan_ids)),
        delete(Unit).where(Unit.commune_code == code),
        delete(Household).where(_in(Household.id, household_ids)),
        delete(LoginToken).where(_in(LoginToken.officer_id, officer_ids)),
        delete(OfficerCommune).where(or_(OfficerCommune.commune_code == code, _in(OfficerCommune.officer_id, officer_ids))),
        delete(Officer).where(_in(Officer.id, officer_ids)),
        delete(RoleGrant).where(or_(RoleGrant.commune_code == code, _in(RoleGrant.person_id, person_ids),
                                    _in(RoleGrant.granted_by, person_ids))),
        delete(Conversation).where(_in(Conversation.identity_id, identity_ids)),
        delete(OutboxMessage).where(or_(_in(OutboxMessage.person_id, person_ids),
                                        (OutboxMessage.channel == "web") & _in(OutboxMessage.chat_id, web_chats))),
        delete(InboxUpdate).where((InboxUpdate.channel == "web") & _in(InboxUpdate.chat_key, web_chats)),
        delete(ChatIdentity).where(_in(ChatIdentity.id, identity_ids)),
        delete(Person).where(_in(Person.id, person_ids)),
        delete(Village).where(_in(Village.id, village_ids)),
        delete(Commune).where(Commune.code == code),
    ]
    deleted = 0
    for stmt in statements:
        deleted += session.exec(stmt).rowcount  # type: ignore[call-overload]
    session.flush()
    return deleted


def reset_demo(engine: Engine, settings: Settings, now: datetime | None = None) -> None:
    """Delete the demo commune's data and seed it again, in one transaction."""
    now = now or datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as session:
        delete_demo(session)
        seed_demo(session, settings, now)
        session.commit()


def demo_command(settings: Settings, reset: bool) -> int:
    """`hoctap demo [seed|reset]`."""
    from models import migrate
    from models.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        migrate.upgrade(engine)
        with Session(engine) as session:
            existing = session.get(Commune, DEMO_COMMUNE_CODE)
            if existing is not None and not existing.is_demo:
                sys.stderr.write(f"Commune {DEMO_COMMUNE_CODE} is a real commune here; the demo cannot use it.\n")
                return 1
            seeded = existing is not None
        if reset:
            reset_demo(engine, settings)
            sys.stdout.write("Demo commune reset: Xã Gia Lộc (demo). Officer sign-in: demo / demo\n")
        elif seeded:
            sys.stdout.write("The demo commune is already there (hoctap demo reset starts it again).\n")
        else:
            with Session(engine, expire_on_commit=False) as session:
                seed_demo(session, settings, datetime.now(UTC))
                session.commit()
            sys.stdout.write("Demo commune seeded: Xã Gia Lộc (demo). Officer sign-in: demo / demo\n")
    finally:
        engine.dispose()
    return 0
