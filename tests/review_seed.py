"""A small, exact commune for the review tests: villages, households, a clan, a unit, assessments in every
state, a photo, a pending village leader, a campaign run, an officer. Two calls give two independent communes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from sqlmodel import Session

from flows.criteria import load_sets
from models.tables import (
    Assessment,
    CampaignRun,
    ChatIdentity,
    Clan,
    ClanMember,
    Evidence,
    Household,
    Person,
    Registration,
    RoleGrant,
    Unit,
    Village,
)
from webhook.admin import add_officer

GIA_LOC = 10999  # Xã Gia Lộc – Hải Phòng
KIM_BANG = 13384  # Phường Kim Bảng – Ninh Bình
PASSWORD = "mat-khau-dai-123"
YEAR = 2027
T0 = datetime(2027, 11, 20, 3, 0, tzinfo=UTC)


def answers(title: str, *, good: bool = True) -> dict[str, Any]:
    """Answers that earn full points (good) or none, for every non-computed criterion of a title."""
    cset = load_sets()[title]
    out: dict[str, Any] = {}
    for c in cset.criteria:
        if c.computed:
            continue
        if c.answer == "yes_no":
            out[c.id] = good
        elif c.answer == "share":
            out[c.id] = 100 if good else 0
        elif c.answer == "number":
            out[c.id] = int(c.max or 0) if good else int(c.min or 0)
        else:
            best = max(c.options, key=lambda o: o.points)
            worst = min(c.options, key=lambda o: o.points)
            out[c.id] = (best if good else worst).value
    return out


def jpeg_bytes(color: tuple[int, int, int] = (40, 120, 200), size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@dataclass
class Seeded:
    code: int
    officer_id: int
    username: str
    villages: list[int] = field(default_factory=list)
    households: dict[str, int] = field(default_factory=dict)
    persons: dict[str, int] = field(default_factory=dict)
    assessments: dict[str, int] = field(default_factory=dict)
    evidence: list[int] = field(default_factory=list)
    grant_id: int = 0
    clan_id: int = 0
    unit_id: int = 0
    run_id: int = 0


def seed(session: Session, *, code: int = GIA_LOC, tag: str = "a", media_dir: Path | None = None,
         officer_password: str = PASSWORD) -> Seeded:
    """Seed one commune; ``tag`` keeps usernames, invite codes and chat ids apart between communes."""
    officer, _ = add_officer(session, commune_code=code, name=f"Cán bộ {tag.upper()}", username=f"canbo_{tag}",
                             password=officer_password)
    s = Seeded(code=code, officer_id=officer.id or 0, username=f"canbo_{tag}")

    v1 = Village(commune_code=code, name="Thôn Đông", invite_code=f"dong{tag}")
    v2 = Village(commune_code=code, name="Thôn Đoài", invite_code=f"doai{tag}")
    session.add_all([v1, v2])
    session.flush()
    s.villages = [v1.id or 0, v2.id or 0]

    def person(key: str, name: str, village: Village, *, chat: bool = True, unreachable: bool = False) -> Person:
        p = Person(name=name, commune_code=code, village_id=village.id, consent_at=T0,
                   unreachable_at=T0 if unreachable else None, unreachable_reason="chặn bot" if unreachable else None)
        session.add(p)
        session.flush()
        if chat:
            session.add(ChatIdentity(channel="telegram", user_id=f"{tag}{p.id}", chat_id=f"{tag}-chat-{p.id}",
                                     person_id=p.id))
        s.persons[key] = p.id or 0
        return p

    leader = person("leader", "Trần Văn Trưởng", v1)
    session.add(RoleGrant(person_id=leader.id or 0, role="village_leader", commune_code=code, village_id=v1.id))
    heads = {
        "an": person("an", "Nguyễn Văn An", v1),
        "binh": person("binh", "Lê Thị Bình", v1),
        "cuong": person("cuong", "Phạm Văn Cường", v1),
        "dung": person("dung", "Đỗ Thị Dung", v2, unreachable=True),
        "em": person("em", "Vũ Văn Em", v2),
    }
    for key, p in heads.items():
        village = v1 if p.village_id == v1.id else v2
        h = Household(commune_code=code, village_id=village.id, head_person_id=p.id, head_name=p.name, members=4)
        session.add(h)
        session.flush()
        s.households[key] = h.id or 0
    # a family without a phone, entered by the village leader
    giang = Household(commune_code=code, village_id=v1.id, head_name="Hoàng Thị Giang", members=2, has_phone=False)
    session.add(giang)
    session.flush()
    s.households["giang"] = giang.id or 0

    pending = person("pending", "Ngô Văn Mới", v2)
    grant = RoleGrant(person_id=pending.id or 0, role="village_leader", status="pending", commune_code=code,
                      village_id=v2.id)
    session.add(grant)
    clan = Clan(commune_code=code, name="Dòng họ Nguyễn", head_person_id=heads["an"].id)
    unit = Unit(commune_code=code, name="Trường Tiểu học", kind="school", staff=20)
    session.add_all([clan, unit])
    session.flush()
    session.add(ClanMember(clan_id=clan.id or 0, household_id=s.households["an"]))
    s.grant_id, s.clan_id, s.unit_id = grant.id or 0, clan.id or 0, unit.id or 0

    def assessment(key: str, hh: str, status: str, *, good: bool = True, confirmed: bool = False,
                   proxy: bool = False) -> Assessment:
        h = session.get(Household, s.households[hh])
        assert h is not None
        session.add(Registration(commune_code=code, subject_type="household", subject_id=h.id or 0, title="gia_dinh",
                                 year=YEAR, registered_by=h.head_person_id))
        a = Assessment(commune_code=code, village_id=h.village_id, subject_type="household", subject_id=h.id or 0,
                       title="gia_dinh", year=YEAR, answers=answers("gia_dinh", good=good), status=status,
                       answered_by=leader.id if proxy else h.head_person_id, proxy=proxy,
                       proxy_by=leader.id if proxy else None, submitted_at=T0,
                       confirmed_by=leader.id if confirmed else None, confirmed_at=T0 if confirmed else None)
        session.add(a)
        session.flush()
        s.assessments[key] = a.id or 0
        return a

    first = assessment("submitted", "an", "submitted")
    assessment("confirmed1", "binh", "confirmed", confirmed=True)
    assessment("failing", "cuong", "confirmed", good=False, confirmed=True)
    assessment("returned", "dung", "returned")
    assessment("recognised", "em", "recognised")
    assessment("proxy", "giang", "submitted", proxy=True)
    # registered, never submitted
    session.add(Registration(commune_code=code, subject_type="clan", subject_id=clan.id or 0, title="dong_ho",
                             year=YEAR))
    cd = Assessment(commune_code=code, village_id=v1.id, subject_type="village", subject_id=v1.id or 0,
                    title="cong_dong", year=YEAR, answers=answers("cong_dong"), status="submitted", submitted_at=T0)
    session.add(cd)
    session.flush()
    s.assessments["village"] = cd.id or 0

    if media_dir is not None:
        data = jpeg_bytes()
        digest = hashlib.sha256(data + tag.encode()).hexdigest()
        rel = f"{digest[:2]}/{digest}.jpg"
        thumb = f"{digest[:2]}/{digest}.thumb.jpg"
        (media_dir / digest[:2]).mkdir(parents=True, exist_ok=True)
        (media_dir / rel).write_bytes(data)
        (media_dir / thumb).write_bytes(jpeg_bytes(size=(32, 24)))
        e = Evidence(assessment_id=first.id or 0, criterion="c3_2", sha256=digest, path=rel, thumb_path=thumb,
                     width=64, height=48, size_bytes=len(data), taken_at="2027-10-02T08:15:00",
                     gps="20.8690,106.2345", sent_by=heads["an"].id)
        session.add(e)
        session.flush()
        s.evidence.append(e.id or 0)

    run = CampaignRun(campaign="assessment", year=YEAR, commune_code=code, started_at=T0, queued=5, no_identity=1)
    session.add(run)
    session.flush()
    s.run_id = run.id or 0
    return s


# --------------------------------------------------------------------------------------------- app helpers


def make_app(engine: Any, tmp_path: Path, **overrides: Any) -> Any:
    from models.settings import get_settings
    from webhook.app import create_app

    media = tmp_path / "media"
    media.mkdir(exist_ok=True)
    settings = get_settings(data_dir=tmp_path, media_dir=media, secret_key="test-secret-key-0123456789",
                            telegram_bot_token="", zalo_bot_token="", zalo_oa_app_id="",
                            public_base_url=overrides.pop("public_base_url", "http://testserver"), **overrides)
    return create_app(settings, engine=engine, background=False)


def csrf_of(html: str) -> str:
    import re

    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def login(client: Any, username: str, password: str = PASSWORD) -> Any:
    page = client.get("/review/login")
    resp = client.post("/review/login", data={"username": username, "password": password,
                                              "csrf": csrf_of(page.text), "next": "/review/"},
                       follow_redirects=False)
    assert resp.status_code == 303, resp.text
    return resp


def csrf_for(client: Any) -> str:
    """A valid CSRF token for the client's cookie (read from any signed-in page)."""
    return csrf_of(client.get("/review/account").text)
