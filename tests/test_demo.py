"""The demo commune: seeded once on an empty install, every state present, reset cleanly, officer can sign in."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import Session, select

from flows.criteria import load_sets, score
from flows.types import Say
from models.settings import get_settings
from models.tables import (
    Assessment,
    ChatIdentity,
    Clan,
    ClanMember,
    Commune,
    Conversation,
    Evidence,
    Household,
    Officer,
    OfficerCommune,
    OutboxMessage,
    Person,
    Province,
    Registration,
    ReviewDecision,
    RoleGrant,
    Village,
)
from webhook.app import create_app
from webhook.demo import DEMO_COMMUNE_CODE, PERSONAS, demo_command, ensure_demo, reset_demo

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam, assessment month of 2026


@pytest.fixture
def settings(tmp_path):
    return get_settings(data_dir=tmp_path, database_url="")


def _count(session: Session, model) -> int:
    return int(session.exec(select(func.count()).select_from(model)).one())


def _counts(engine) -> dict[str, int]:
    models = (Commune, Village, Person, ChatIdentity, RoleGrant, Household, Clan, ClanMember, Registration,
              Assessment, Evidence, ReviewDecision, Officer, OfficerCommune)
    with Session(engine) as session:
        return {m.__name__: _count(session, m) for m in models}


def test_seeds_once_and_marks_the_commune_as_demo(engine, settings) -> None:
    assert ensure_demo(engine, settings, now=NOW) is True
    first = _counts(engine)
    assert ensure_demo(engine, settings, now=NOW) is False
    assert _counts(engine) == first
    with Session(engine) as session:
        commune = session.get(Commune, DEMO_COMMUNE_CODE)
        assert commune is not None
        assert (commune.name, commune.province_code, commune.is_demo) == ("Xã Gia Lộc", 31, True)
        assert session.get(Province, 31).name == "Thành phố Hải Phòng"
        assert set(commune.targets) == {"2025", "2026"}
        assert commune.targets["2026"]["gia_dinh"] == 75
        villages = session.exec(select(Village).where(Village.commune_code == DEMO_COMMUNE_CODE)).all()
        assert len(villages) == 3
        assert all(v.invite_code and v.status == "active" for v in villages)
    assert first["Clan"] == 1 and first["ClanMember"] == 5 and first["OfficerCommune"] == 1


def test_demo_commune_matches_the_official_list() -> None:
    from vietnam_provinces import Province as VnProvince
    from vietnam_provinces import Ward

    ward = next(w for w in Ward.iter_all() if int(w.code) == DEMO_COMMUNE_CODE)
    assert (ward.name, int(ward.province_code)) == ("Xã Gia Lộc", 31)
    assert next(p for p in VnProvince.iter_all() if int(p.code) == 31).name == "Thành phố Hải Phòng"


def test_skips_when_a_real_commune_exists(engine, settings) -> None:
    with Session(engine) as session:
        session.add(Province(code=1, name="Thành phố Hà Nội"))
        session.flush()
        session.add(Commune(code=4, name="Phường Ba Đình", province_code=1))
        session.commit()
    assert ensure_demo(engine, settings, now=NOW) is False
    with Session(engine) as session:
        assert session.get(Commune, DEMO_COMMUNE_CODE) is None


def test_households_in_every_state_with_valid_scored_answers(engine, settings) -> None:
    ensure_demo(engine, settings, now=NOW)
    sets = load_sets()
    with Session(engine) as session:
        households = session.exec(select(Household)).all()
        this_year = session.exec(select(Assessment).where(Assessment.year == 2026)).all()
        states = {a.status for a in this_year if a.title == "gia_dinh"}
        assert {"draft", "submitted", "confirmed", "in_review", "returned", "recognised", "rejected"} <= states
        assessed = {a.subject_id for a in this_year if a.subject_type == "household"}
        registered = set(session.exec(select(Registration.subject_id).where(
            Registration.subject_type == "household", Registration.year == 2026)).all())
        assert registered - assessed, "a household that registered and has not started"
        assert {h.id for h in households} - registered, "a household not registered this year"
        last_year = session.exec(select(Assessment).where(Assessment.year == 2025)).all()
        assert {a.title for a in last_year if a.status == "recognised"} >= {"gia_dinh", "dong_ho", "cong_dong"}
        assert any(not h.has_phone for h in households)
        assert any(a.proxy for a in this_year)
        for a in session.exec(select(Assessment)).all():
            cset = sets[a.title]
            assert set(a.answers) <= set(cset.ids), a.title
            result = score(cset, a.answers, _computed(a))
            assert not [c for c in result.criteria if c.state == "invalid"], (a.title, a.answers)
            assert a.total == result.total
            if a.status != "draft":
                assert a.passed == result.passed and a.submitted_at is not None
        returned = next(a for a in this_year if a.status == "returned")
        reason = session.exec(select(ReviewDecision.reason).where(
            ReviewDecision.assessment_id == returned.id, ReviewDecision.decision == "return")).one()
        assert "ảnh" in reason


def _computed(a: Assessment) -> dict:
    # the seed's computed shares (clan and village criteria that count recognised households)
    return {
        ("dong_ho", 2025): {"member_households_recognised": 80},
        ("cong_dong", 2025): {"village_households_recognised": 75, "village_clans_recognised": 100},
        ("cong_dong", 2026): {"village_households_recognised": 40, "village_clans_recognised": "na"},
    }.get((a.title, a.year), {})


def test_photos_are_real_jpegs_with_thumbnails(engine, settings) -> None:
    from PIL import Image

    ensure_demo(engine, settings, now=NOW)
    with Session(engine) as session:
        evidence = session.exec(select(Evidence)).all()
        submitted = session.exec(select(Assessment).where(Assessment.status != "draft")).all()
        required = {a.id for a in submitted if a.title == "gia_dinh"}
        with_c3_2 = {e.assessment_id for e in evidence if e.criterion == "c3_2"}
    assert required <= with_c3_2, "every submitted family has the required study-corner photo"
    assert len({e.sha256 for e in evidence}) == len(evidence) > 10
    for e in evidence[:3]:
        with Image.open(settings.media_path / e.path) as img:
            assert img.format == "JPEG" and img.size == (e.width, e.height)
        assert (settings.media_path / e.thumb_path).is_file()
        assert e.size_bytes == (settings.media_path / e.path).stat().st_size


def test_personas_have_web_chats_and_roles(engine, settings) -> None:
    ensure_demo(engine, settings, now=NOW)
    with Session(engine) as session:
        for persona in PERSONAS:
            identity = session.exec(select(ChatIdentity).where(
                ChatIdentity.channel == "web", ChatIdentity.user_id == persona.chat_id)).one()
            assert identity.chat_id == persona.chat_id
            roles = session.exec(select(RoleGrant.role).where(
                RoleGrant.person_id == identity.person_id, RoleGrant.status == "granted")).all()
            assert persona.role in roles, persona
            assert session.get(Person, identity.person_id).consent_at is not None
        officer = session.exec(select(Officer).where(Officer.username == "demo")).one()
        assert session.exec(select(OfficerCommune.commune_code).where(
            OfficerCommune.officer_id == officer.id)).all() == [DEMO_COMMUNE_CODE]


def test_demo_officer_signs_in_with_demo_demo_and_pages_say_demo(engine, settings) -> None:
    ensure_demo(engine, settings, now=NOW)
    with TestClient(create_app(settings, engine=engine, background=False)) as client:
        page = client.get("/review/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        wrong = client.post("/review/login", data={"username": "demo", "password": "wrong", "csrf": csrf})
        assert "(demo)" not in wrong.text and client.get("/review/", follow_redirects=False).status_code in (302, 303)
        client.post("/review/login", data={"username": "demo", "password": "demo", "csrf": csrf})
        dashboard = client.get("/review/")
    assert dashboard.status_code == 200
    assert "Xã Gia Lộc (demo)" in dashboard.text


def test_reset_deletes_demo_data_and_reseeds_leaving_others_alone(engine, settings) -> None:
    ensure_demo(engine, settings, now=NOW)
    before = _counts(engine)
    with Session(engine) as session:
        # a real commune elsewhere, untouched by the reset
        session.add(Province(code=1, name="Thành phố Hà Nội"))
        session.flush()
        session.add(Commune(code=4, name="Phường Ba Đình", province_code=1))
        session.flush()
        session.add(Household(commune_code=4, head_name="Người thật"))
        # what a simulator session leaves behind: a conversation and messages of a demo persona
        identity = session.exec(select(ChatIdentity).where(ChatIdentity.user_id == "demo-family")).one()
        session.add(Conversation(identity_id=identity.id, state={"step": "assess", "data": {}}))
        session.add(OutboxMessage(idempotency_key="web:demo-family:x:0", channel="web", chat_id="demo-family",
                                  person_id=identity.person_id, payload=Say("Câu 4/10").to_json()))
        # and a stranger who started in the simulator without finishing sign-up
        stranger = ChatIdentity(channel="web", user_id="web-abc", chat_id="web-abc")
        session.add(stranger)
        session.flush()
        session.add(Conversation(identity_id=stranger.id, state={"step": "village_pick", "data": {}}))
        session.commit()
    reset_demo(engine, settings, now=NOW)
    after = _counts(engine)
    assert {k: after[k] for k in before if k not in ("Commune", "Household")} == {
        k: before[k] for k in before if k not in ("Commune", "Household")}
    assert after["Commune"] == before["Commune"] + 1 and after["Household"] == before["Household"] + 1
    with Session(engine) as session:
        assert _count(session, Conversation) == 0
        assert _count(session, OutboxMessage) == 0
        assert session.exec(select(Household).where(Household.commune_code == 4)).one().head_name == "Người thật"


def test_demo_command_seeds_then_resets(db_url, tmp_path, capsys) -> None:
    settings = get_settings(data_dir=tmp_path, database_url=db_url)
    assert demo_command(settings, reset=False) == 0
    assert "demo / demo" in capsys.readouterr().out
    assert demo_command(settings, reset=False) == 0
    assert "already" in capsys.readouterr().out
    assert demo_command(settings, reset=True) == 0
    from models.db import make_engine

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            assert session.exec(select(Commune.code).where(Commune.is_demo)).all() == [DEMO_COMMUNE_CODE]
            assert _count(session, Officer) == 1
    finally:
        engine.dispose()


def test_cli_demo_reset(db_url, tmp_path, monkeypatch, capsys) -> None:
    from webhook.cli import main

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["demo", "reset"]) == 0
    assert "Xã Gia Lộc (demo)" in capsys.readouterr().out
