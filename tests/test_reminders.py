"""Reminder campaigns: audiences, idempotent fan-out, catch-up, quiet hours, digests, CLI; explicit clock."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.campaigns import CampaignError, QuietHours, due_runs, load_campaigns, override_files
from bot.scheduler import (
    SchedulerHandle,
    build_scheduler,
    remind_command,
    run_campaign,
    run_due,
    start_scheduler,
    stop_scheduler,
    unreachable_report,
)
from models.settings import get_settings
from models.tables import (
    Assessment,
    CampaignRun,
    CampaignYear,
    ChatIdentity,
    Commune,
    Household,
    OutboxMessage,
    Person,
    Province,
    Registration,
    RoleGrant,
    Village,
)

VN = ZoneInfo("Asia/Ho_Chi_Minh")
YEAR = 2027
CONFIG = load_campaigns()


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=VN)  # type: ignore[misc]


@dataclass
class World:
    """A commune with two villages; ids by short name."""

    people: dict[str, int]
    households: dict[str, int]
    villages: dict[str, int]


def _person(s: Session, name: str, *, village: int | None, consent: bool = True,
            identities: tuple[tuple[str, str], ...] = (), unreachable: bool = False) -> Person:
    p = Person(name=name, commune_code=1, village_id=village,
               consent_at=datetime(2026, 12, 1, tzinfo=UTC) if consent else None,
               unreachable_at=datetime(2027, 1, 2, tzinfo=UTC) if unreachable else None)
    s.add(p)
    s.flush()
    for channel, uid in identities:
        s.add(ChatIdentity(channel=channel, user_id=uid, chat_id=uid, person_id=p.id))
    return p


def _household(s: Session, head: Person | None, name: str, village: int) -> Household:
    h = Household(commune_code=1, village_id=village, head_person_id=head.id if head else None, head_name=name,
                  has_phone=head is not None)
    s.add(h)
    s.flush()
    if head is not None:
        s.add(RoleGrant(person_id=head.id, role="household", commune_code=1, village_id=village))
    return h


def _register(s: Session, h: Household, title: str = "gia_dinh", status: str = "registered") -> None:
    s.add(Registration(commune_code=1, subject_type="household", subject_id=h.id, title=title, year=YEAR,
                       status=status))


def _assess(s: Session, h: Household, status: str) -> None:
    s.add(Assessment(commune_code=1, village_id=h.village_id, subject_type="household", subject_id=h.id,
                     title="gia_dinh", year=YEAR, status=status))


@pytest.fixture
def world(session: Session) -> World:
    s = session
    s.add(Province(code=31, name="Hải Phòng"))
    s.flush()
    s.add(Commune(code=1, name="Gia Lộc", province_code=31))
    s.flush()
    v1 = Village(commune_code=1, name="Thôn Đông", invite_code="DONG")
    v2 = Village(commune_code=1, name="Thôn Tây", invite_code="TAY")
    s.add_all([v1, v2])
    s.flush()
    assert v1.id is not None and v2.id is not None
    people: dict[str, Person] = {}
    hh: dict[str, Household] = {}
    # an (household head, village) for each state; two identities for "an"
    spec = [
        ("an", "Nguyễn Văn An", v1.id, (("telegram", "100"), ("zalo", "z100"))),
        ("binh", "Trần Thị Bình", v1.id, (("telegram", "101"),)),
        ("cuc", "Lê Thị Cúc", v1.id, (("zalo", "z102"),)),
        ("dung", "Phạm Văn Dũng", v1.id, (("telegram", "103"),)),
        ("em", "Hoàng Văn Em", v2.id, ()),  # no chat identity
        ("giang", "Vũ Thị Giang", v2.id, (("telegram", "105"),)),
        ("hoa", "Đỗ Thị Hoa", v2.id, (("telegram", "106"),)),
    ]
    for key, name, village, identities in spec:
        people[key] = _person(s, name, village=village, identities=identities)
        hh[key] = _household(s, people[key], name, village)
    # blocked the bot
    people["khanh"] = _person(s, "Bùi Văn Khánh", village=v2.id, identities=(("telegram", "107"),),
                              unreachable=True)
    hh["khanh"] = _household(s, people["khanh"], "Bùi Văn Khánh", v2.id)
    # no consent yet: never reminded
    people["lan"] = _person(s, "Ngô Thị Lan", village=v1.id, consent=False, identities=(("telegram", "108"),))
    hh["lan"] = _household(s, people["lan"], "Ngô Thị Lan", v1.id)
    # a person with a chat but no role; a pending leader claim
    people["minh"] = _person(s, "Đặng Văn Minh", village=v1.id, identities=(("telegram", "109"),))
    people["nam"] = _person(s, "Trịnh Văn Nam", village=v2.id, identities=(("telegram", "110"),))
    s.add(RoleGrant(person_id=people["nam"].id, role="village_leader", status="pending", village_id=v2.id))
    # a family without a phone, entered by the leader
    hh["oanh"] = _household(s, None, "Lý Thị Oanh", v1.id)
    # granted village leader of Thôn Đông (also a chat), and a commune officer
    people["leader"] = _person(s, "Cao Văn Phúc", village=v1.id, identities=(("telegram", "200"),))
    s.add(RoleGrant(person_id=people["leader"].id, role="village_leader", commune_code=1, village_id=v1.id))
    people["officer"] = _person(s, "Mai Thị Quyên", village=None, consent=False, identities=(("telegram", "300"),))
    s.add(RoleGrant(person_id=people["officer"].id, role="officer", commune_code=1))
    s.flush()
    # registrations: an, binh, cuc, dung, khanh, oanh registered; giang cancelled; em, hoa not
    for key in ("an", "binh", "cuc", "dung", "em", "khanh", "oanh"):
        if key != "em":
            _register(s, hh[key])
    _register(s, hh["em"], status="cancelled")
    _register(s, hh["giang"], status="cancelled")
    # hoa: never registered
    # the village leader registered the village for cong_dong
    s.add(Registration(commune_code=1, subject_type="village", subject_id=v1.id, title="cong_dong", year=YEAR))
    # assessments: an submitted, binh returned, cuc draft, dung none, oanh confirmed (proxy)
    _assess(s, hh["an"], "submitted")
    _assess(s, hh["binh"], "returned")
    _assess(s, hh["cuc"], "draft")
    _assess(s, hh["oanh"], "confirmed")
    s.add(CampaignYear(commune_code=1, year=YEAR, registration_deadline=datetime(2027, 1, 30, 10, tzinfo=UTC),
                       assessment_deadline=datetime(2027, 11, 28, 10, tzinfo=UTC)))
    s.commit()
    return World(
        people={k: int(v.id) for k, v in people.items() if v.id is not None},
        households={k: int(v.id) for k, v in hh.items() if v.id is not None},
        villages={"dong": v1.id, "tay": v2.id},
    )


def outbox(s: Session, campaign: str | None = None) -> list[OutboxMessage]:
    q = select(OutboxMessage).order_by(OutboxMessage.id)
    if campaign:
        q = q.where(OutboxMessage.campaign == campaign)
    return list(s.scalars(q).all())


def recipients(rows: list[OutboxMessage]) -> set[int]:
    return {int(r.person_id) for r in rows if r.person_id is not None}


def ids(w: World, *names: str) -> set[int]:
    return {w.people[n] for n in names}


# --- campaigns as data ---------------------------------------------------------------------------


def test_default_campaigns_are_the_contract_ids() -> None:
    assert set(CONFIG.campaigns) == {
        "registration", "registration_followup", "assessment", "assessment_followup", "village_digest",
        "officer_digest",
    }


def test_override_file_changes_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "31.yaml").write_text(
        "campaigns:\n  registration: {cron: '30 9 6 1 *', window: 12h}\n  officer_digest: {enabled: false}\n",
        encoding="utf-8")
    config = load_campaigns(override_files(tmp_path, [31, 10999]))
    reg = config.get("registration")
    assert reg.crons == ("30 9 6 1 *",)
    assert reg.window == timedelta(hours=12)
    assert reg.template == "remind.registration"
    assert not config.get("officer_digest").enabled
    assert [c.id for c in config.enabled()].count("officer_digest") == 0


def test_broken_campaign_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "default.yaml").write_text("campaigns:\n  x: {cron: '0 8 1 1 *', audience: all}\n",
                                                           encoding="utf-8")
    with pytest.raises(CampaignError, match="audience 'all'"):
        load_campaigns(override_files(tmp_path, []))
    with pytest.raises(CampaignError, match="unknown campaign 'nope'"):
        CONFIG.get("nope")


# --- when: due runs and catch-up ------------------------------------------------------------------

FIRINGS = [
    ("registration", local(YEAR, 1, 5, 8, 0)),
    ("registration_followup", local(YEAR, 1, 20, 8, 0)),
    ("assessment", local(YEAR, 11, 1, 8, 0)),
    ("assessment_followup", local(YEAR, 11, 15, 8, 0)),
    ("village_digest", local(YEAR, 11, 1, 8, 0)),
    ("village_digest", local(YEAR, 11, 15, 8, 0)),
    ("officer_digest", local(YEAR, 11, 25, 8, 0)),
    ("officer_digest", local(YEAR, 12, 10, 8, 0)),
]


@pytest.mark.parametrize(("campaign_id", "at"), FIRINGS)
def test_each_default_campaign_fires_at_its_local_time(campaign_id: str, at: datetime) -> None:
    campaign = CONFIG.get(campaign_id)
    before = due_runs([campaign], {}, at - timedelta(minutes=1))
    assert all(when < at.astimezone(UTC) for _, when in before)
    assert due_runs([campaign], {}, at) == [(campaign, at.astimezone(UTC))]
    assert due_runs([campaign], {}, at + timedelta(minutes=5)) == [(campaign, at.astimezone(UTC))]
    # once recorded, it is not due again
    assert due_runs([campaign], {campaign_id: at.astimezone(UTC)}, at + timedelta(minutes=5)) == []


def test_all_due_on_one_day() -> None:
    due = due_runs(CONFIG.enabled(), {}, local(YEAR, 11, 1, 8, 30))
    assert sorted(c.id for c, _ in due) == ["assessment", "village_digest"]
    assert due_runs(CONFIG.enabled(), {}, local(YEAR, 6, 1, 8, 30)) == []


def test_missed_run_is_caught_up_within_its_window_and_not_after() -> None:
    reg = CONFIG.get("registration")  # window 3 days
    fired = local(YEAR, 1, 5, 8, 0).astimezone(UTC)
    assert due_runs([reg], {}, local(YEAR, 1, 8, 7, 59)) == [(reg, fired)]
    assert due_runs([reg], {}, local(YEAR, 1, 8, 8, 1)) == []
    # last year's run does not count for this year
    assert due_runs([reg], {"registration": local(YEAR - 1, 1, 5, 8, 0)}, local(YEAR, 1, 6)) == [(reg, fired)]


def test_missed_firings_coalesce_into_the_latest() -> None:
    digest = CONFIG.get("village_digest")
    wide = type(digest)(**{**digest.__dict__, "window": timedelta(days=20)})
    assert due_runs([wide], {}, local(YEAR, 11, 16, 9, 0)) == [(wide, local(YEAR, 11, 15, 8, 0).astimezone(UTC))]


def test_quiet_hours() -> None:
    quiet = QuietHours.parse("21:00-07:00")
    assert quiet.not_before(local(YEAR, 1, 5, 22, 30), VN) == local(YEAR, 1, 6, 7, 0).astimezone(UTC)
    assert quiet.not_before(local(YEAR, 1, 6, 6, 59), VN) == local(YEAR, 1, 6, 7, 0).astimezone(UTC)
    assert quiet.not_before(local(YEAR, 1, 5, 21, 0), VN) == local(YEAR, 1, 6, 7, 0).astimezone(UTC)
    assert quiet.not_before(local(YEAR, 1, 5, 8, 0), VN) == local(YEAR, 1, 5, 8, 0).astimezone(UTC)
    assert quiet.not_before(local(YEAR, 1, 5, 20, 59), VN) == local(YEAR, 1, 5, 20, 59).astimezone(UTC)


# --- who: audiences -------------------------------------------------------------------------------


def test_registration_goes_to_consenting_people_with_a_role(session: Session, world: World) -> None:
    result = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 0))
    session.commit()
    rows = outbox(session, "registration")
    # no consent (lan), no role (minh), pending leader (nam), officer: not reminded; khanh blocked the bot
    assert recipients(rows) == ids(world, "an", "binh", "cuc", "dung", "giang", "hoa", "leader")
    assert result.unreachable == 1
    assert result.no_identity == 1 and [p[1] for p in result.no_identity_people] == ["Hoàng Văn Em"]
    # one row per chat identity
    an = [r for r in rows if r.person_id == world.people["an"]]
    assert sorted((r.channel, r.chat_id) for r in an) == [("telegram", "100"), ("zalo", "z100")]
    assert len(rows) == result.queued == 8
    assert result.per_channel == {"telegram": 6, "zalo": 2}
    for r in rows:
        assert r.priority == 10
        assert r.status == "queued"
        assert r.idempotency_key.startswith(f"registration:{YEAR}:{r.person_id}:")
    text = an[0].payload["text"]
    assert text.startswith("⏰ Chào Anh/Chị Nguyễn Văn An!")
    assert "“Gia đình học tập”" in text and "30/01/2027" in text
    assert [(b["label"], b["value"]) for b in an[0].payload["buttons"]] == [
        ("Bắt đầu", "go:register"), ("Để sau", "go:later")]
    leader = next(r for r in rows if r.person_id == world.people["leader"])
    assert "“Cộng đồng học tập”" in leader.payload["text"]
    run = session.scalars(select(CampaignRun)).one()
    assert (run.campaign, run.year, run.queued, run.no_identity, run.dry_run) == (
        "registration", YEAR, 8, 1, False)


def test_registration_followup_skips_those_registered(session: Session, world: World) -> None:
    run_campaign(session, "registration_followup", YEAR, local(YEAR, 1, 20, 8, 0))
    session.commit()
    # giang cancelled, hoa never registered; the leader registered the village; em has no chat
    assert recipients(outbox(session)) == ids(world, "giang", "hoa")


def test_assessment_goes_to_those_registered(session: Session, world: World) -> None:
    run_campaign(session, "assessment", YEAR, local(YEAR, 11, 1, 8, 0))
    session.commit()
    rows = outbox(session)
    assert recipients(rows) == ids(world, "an", "binh", "cuc", "dung", "leader")
    assert "28/11/2027" in rows[0].payload["text"]
    # [Bắt đầu] opens the assessment of the person's title (flows/engine.py "go:" actions)
    starts = {r.person_id: r.payload["buttons"][0]["value"] for r in rows}
    assert starts[world.people["an"]] == "go:assess:gia_dinh"
    assert starts[world.people["leader"]] == "go:assess:cong_dong"


def test_assessment_followup_skips_submitted_and_flags_returned(session: Session, world: World) -> None:
    run_campaign(session, "assessment_followup", YEAR, local(YEAR, 11, 15, 8, 0))
    session.commit()
    rows = outbox(session)
    # an submitted: skipped; binh returned; cuc draft; dung none; leader's village never assessed
    assert recipients(rows) == ids(world, "binh", "cuc", "dung", "leader")
    binh = next(r for r in rows if r.person_id == world.people["binh"])
    assert binh.payload["text"].startswith("⚠️")
    assert [(b["label"], b["value"]) for b in binh.payload["buttons"]] == [
        ("Xem hồ sơ", "go:status"), ("Để sau", "go:later")]
    cuc = next(r for r in rows if r.person_id == world.people["cuc"])
    assert cuc.payload["text"].startswith("⏰ Anh/Chị Lê Thị Cúc chưa gửi")


def test_village_digest_lists_who_has_not_submitted(session: Session, world: World) -> None:
    result = run_campaign(session, "village_digest", YEAR, local(YEAR, 11, 1, 8, 0))
    session.commit()
    rows = outbox(session)
    assert recipients(rows) == ids(world, "leader")
    text = rows[0].payload["text"]
    # Thôn Đông: an, binh, cuc, dung, oanh registered; an submitted, oanh confirmed → 3 pending
    assert text.startswith("⏰ Thôn Đông: 3/5 hộ")
    assert "Bình, Cúc, Dũng" in text
    # oanh has no phone: listed for the leader to see in person
    assert "chưa nhắn được cho 1 người (Oanh)" in text
    assert result.people == 1
    # the 15 November digest is a new message, not a duplicate of the 1st
    again = run_campaign(session, "village_digest", YEAR, local(YEAR, 11, 15, 8, 0))
    session.commit()
    assert again.queued == 1
    keys = [r.idempotency_key for r in outbox(session)]
    assert keys[0].startswith("village_digest@11-01:2027:") and keys[1].startswith("village_digest@11-15:2027:")


def test_officer_digest_counts(session: Session, world: World) -> None:
    run_campaign(session, "officer_digest", YEAR, local(YEAR, 11, 25, 8, 0))
    session.commit()
    rows = outbox(session)
    assert recipients(rows) == ids(world, "officer")
    # awaiting: an submitted + oanh confirmed; returned: binh; unreachable: em (no chat), khanh (blocked),
    # oanh (no phone)
    assert rows[0].payload["text"] == (
        "⏰ Xã Gia Lộc, năm 2027: 2 hồ sơ chờ duyệt, 1 hồ sơ đã trả lại chờ bổ sung, 3 người chưa nhắn tin "
        "được. Hạn xét duyệt 20/12/2027. Anh/Chị mở trang duyệt để xem.")


def test_unreachable_report(session: Session, world: World) -> None:
    # the sender found dung's chat gone
    session.add(OutboxMessage(idempotency_key="x", channel="telegram", chat_id="103", person_id=world.people["dung"],
                              status="unreachable"))
    session.commit()
    report = unreachable_report(session, commune_code=1)
    got = {(u.name, u.reason, u.village_id) for u in report}
    assert got == {
        ("Hoàng Văn Em", "no_identity", world.villages["tay"]),
        ("Bùi Văn Khánh", "blocked", world.villages["tay"]),
        ("Phạm Văn Dũng", "undelivered", world.villages["dong"]),
        ("Lý Thị Oanh", "no_phone", world.villages["dong"]),
    }
    # a later delivery clears "undelivered"
    session.add(OutboxMessage(idempotency_key="y", channel="telegram", chat_id="103", person_id=world.people["dung"],
                              status="sent"))
    session.commit()
    assert "Phạm Văn Dũng" not in {u.name for u in unreachable_report(session)}


# --- idempotency ----------------------------------------------------------------------------------


def count(s: Session) -> int:
    return int(s.execute(select(func.count()).select_from(OutboxMessage)).scalar_one())


def test_a_repeated_run_sends_nothing_twice(session: Session, world: World) -> None:
    first = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 0))
    session.commit()
    second = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 9, 0))
    session.commit()
    assert (first.queued, second.queued, second.skipped_existing) == (8, 0, 8)
    assert count(session) == 8


class Crash(Exception):
    pass


def test_a_run_rolled_back_mid_way_then_rerun_sends_each_once(session: Session, world: World) -> None:
    def crash(done: int) -> None:
        if done >= 3:
            raise Crash

    with pytest.raises(Crash):
        run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 0), batch_size=3, on_batch=crash)
    session.rollback()
    assert count(session) == 0
    result = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 5), batch_size=3)
    session.commit()
    assert result.queued == 8 and count(session) == 8


def test_a_run_resumed_after_partial_commit_sends_only_the_rest(session: Session, world: World) -> None:
    def commit_then_crash(done: int) -> None:
        session.commit()  # batches already committed (e.g. a per-batch committing sender) survive the crash
        if done >= 3:
            raise Crash

    with pytest.raises(Crash):
        run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 0), batch_size=3,
                     on_batch=commit_then_crash)
    session.rollback()
    assert count(session) == 3
    result = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 5), batch_size=3)
    session.commit()
    assert (result.queued, result.skipped_existing) == (5, 3)
    keys = [r.idempotency_key for r in outbox(session)]
    assert len(keys) == len(set(keys)) == 8


def test_dry_run_writes_nothing(session: Session, world: World) -> None:
    result = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 8, 0), dry_run=True)
    session.commit()
    assert result.rows == 8 and result.queued == 0 and result.sample is not None
    assert count(session) == 0
    assert session.scalar(select(func.count()).select_from(CampaignRun)) == 0


def test_quiet_hours_hold_rows_until_seven(session: Session, world: World) -> None:
    result = run_campaign(session, "registration", YEAR, local(YEAR, 1, 5, 23, 15))
    session.commit()
    seven = local(YEAR, 1, 6, 7, 0).astimezone(UTC)
    assert result.not_before == seven
    for row in outbox(session):
        nb = row.not_before if row.not_before.tzinfo else row.not_before.replace(tzinfo=UTC)
        assert nb == seven


# --- catch-up through run_due ---------------------------------------------------------------------


def test_run_due_catches_up_once(engine: Engine, session: Session, world: World) -> None:
    now = local(YEAR, 1, 6, 23, 0)  # the server was down on the 5th; it is night now
    results = run_due(engine, CONFIG, now)
    assert [(r.campaign, r.queued) for r in results] == [("registration", 8)]
    assert results[0].scheduled_for == local(YEAR, 1, 5, 8, 0).astimezone(UTC)
    assert results[0].not_before == local(YEAR, 1, 7, 7, 0).astimezone(UTC)
    assert run_due(engine, CONFIG, now + timedelta(hours=1)) == []
    # too late: past the window nothing is caught up
    assert run_due(engine, CONFIG, local(YEAR, 1, 23, 8, 0)) == []
    assert count(session) == 8


def test_a_manual_run_counts_as_the_scheduled_one(engine: Engine, session: Session, world: World) -> None:
    run_campaign(session, "assessment", YEAR, local(YEAR, 11, 1, 7, 50) + timedelta(minutes=20))
    session.commit()
    results = run_due(engine, CONFIG, local(YEAR, 11, 1, 9, 0))
    assert [r.campaign for r in results] == ["village_digest"]


# --- the serve process ----------------------------------------------------------------------------


@dataclass
class FakeRuntime:
    settings: Any
    engine: Engine


def test_scheduler_jobs_use_window_and_coalesce(engine: Engine) -> None:
    handle = SchedulerHandle(engine=engine, config=CONFIG, quiet_hours="21:00-07:00")
    sched = build_scheduler(handle)
    jobs = {job.id: job for job in sched.get_jobs()}
    assert set(jobs) == {f"campaign:{c}" for c in CONFIG.campaigns}
    reg = jobs["campaign:registration"]
    assert reg.misfire_grace_time == 3 * 86400 and reg.coalesce and reg.max_instances == 1


def test_start_catches_up_and_stop_releases(engine: Engine, session: Session, world: World,
                                            tmp_path: Path) -> None:
    settings = get_settings(database_url=str(engine.url.render_as_string(hide_password=False)), data_dir=tmp_path)
    runtime = FakeRuntime(settings, engine)
    clock = lambda: local(YEAR, 1, 5, 10, 0)  # noqa: E731

    async def main() -> SchedulerHandle:
        handle = await start_scheduler(runtime, clock=clock)
        assert handle.task is not None
        await handle.task
        assert handle.leading
        next_run = handle.scheduler.get_job("campaign:registration_followup").next_run_time
        await stop_scheduler(runtime)
        assert not handle.leading and handle.lock_conn is None
        assert next_run is not None
        return handle

    asyncio.run(main())
    assert count(session) == 8
    runs = session.execute(select(CampaignRun.campaign, CampaignRun.scheduled_for)).all()
    assert [r[0] for r in runs] == ["registration"]


def test_only_one_process_leads_on_postgresql(engine: Engine) -> None:
    first = SchedulerHandle(engine=engine, config=CONFIG, quiet_hours="21:00-07:00")
    second = SchedulerHandle(engine=engine, config=CONFIG, quiet_hours="21:00-07:00")
    try:
        assert first.try_lock()
        if engine.dialect.name != "postgresql":
            assert second.try_lock()  # SQLite: one process, no lock needed
            return
        assert not second.try_lock()
        first.release()
        assert second.try_lock()
    finally:
        first.release()
        second.release()


# --- CLI ------------------------------------------------------------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"campaign": None, "year": None, "dry_run": False, "now": None, "list": False}
    base.update(kw)
    return argparse.Namespace(**base)


def _settings(engine: Engine, tmp_path: Path) -> Any:
    return get_settings(database_url=engine.url.render_as_string(hide_password=False), data_dir=tmp_path)


def test_cli_list(engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert remind_command(_settings(engine, tmp_path), _args(list=True, now="2027-03-01T10:00")) == 0
    out = capsys.readouterr().out
    assert "registration " in out and "2028-01-05 08:00" in out
    assert "officer_digest" in out and "2027-11-25 08:00" in out


def test_cli_bad_campaign(engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert remind_command(_settings(engine, tmp_path), _args(campaign="registraton", year=YEAR)) == 2
    err = capsys.readouterr().err
    assert "unknown campaign 'registraton'" in err and "registration_followup" in err


def test_cli_dry_run_then_run(engine: Engine, session: Session, world: World, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(engine, tmp_path)
    args = _args(campaign="registration", year=YEAR, dry_run=True, now="2027-01-05T08:00")
    assert remind_command(settings, args) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "telegram: 6" in out and "zalo: 2" in out and "⏰ Chào Anh/Chị" in out
    assert count(session) == 0
    assert remind_command(settings, _args(campaign="registration", year=YEAR, now="2027-01-05T08:00")) == 0
    assert "queued: 8" in capsys.readouterr().out
    assert count(session) == 8


def test_cli_entry_point(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import main

    monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert main(["remind", "nope", "--year", "2027"]) == 2
    assert main(["remind", "registration", "--year", "2027", "--now", "yesterday"]) == 2
    assert main(["remind", "registration", "--year", "2027", "--dry-run", "--now", "2027-01-05T08:00"]) == 0
    assert "people reached: 0" in capsys.readouterr().out


# --- voice ----------------------------------------------------------------------------------------


def test_reminders_follow_the_voice(session: Session, world: World) -> None:
    """Even with a long name and every title, a reminder stays ≤ 300 characters and buttons ≤ 20."""
    long_name = "Nguyễn Thị Phương Thảo Hoàng Lan"
    session.execute(Person.__table__.update().values(name=long_name))
    for title in ("dong_ho", "cong_dan"):
        h = session.get(Household, world.households["binh"])
        assert h is not None
        _register(session, h, title=title)
    session.commit()
    for campaign_id, at in FIRINGS:
        result = run_campaign(session, campaign_id, YEAR, at, dry_run=True)
        assert result.sample is not None, campaign_id
        assert all(len(b.label) <= 20 for b in result.sample.buttons)
    for campaign_id in ("registration", "registration_followup", "assessment", "assessment_followup",
                        "village_digest", "officer_digest"):
        run_campaign(session, campaign_id, YEAR, dict(FIRINGS)[campaign_id])
    session.commit()
    texts = [r.payload["text"] for r in outbox(session)]
    assert texts
    for text in texts:
        assert len(text) <= 300 or "\n" in text and all(len(p) <= 300 for p in text.split("\n")), text
        assert text.startswith(("⏰", "⚠️")), text
        assert " bạn " not in text
