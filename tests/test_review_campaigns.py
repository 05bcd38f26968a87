"""The campaigns page: each campaign's schedule in words and next run (the scheduler's own next_fire, for an
explicit clock), past runs, and delivery counts per campaign, year and state — only of the officer's commune."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from bot.campaigns import load_campaigns
from bot.scheduler import default_config
from models.tables import CampaignRun, OutboxMessage
from tests.review_seed import GIA_LOC, KIM_BANG, T0, login, make_app, seed
from webhook.review import Delivery, campaign_lines, delivery_counts, schedule_words

VN = ZoneInfo("Asia/Ho_Chi_Minh")
NOW = datetime(2027, 11, 10, 12, 0, tzinfo=VN)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def rows_of(html: str, table_class: str) -> list[str]:
    table = re.search(rf'<table class="data {table_class}">(.*?)</table>', html, re.S)
    assert table, table_class
    return [text_of(r).strip() for r in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)[1:]]


def test_schedule_in_words() -> None:
    config = default_config()
    assert schedule_words(config.get("registration")) == "8:00 ngày 5 tháng 1 hằng năm"
    assert schedule_words(config.get("village_digest")) == "8:00 ngày 1 và 15 tháng 11 hằng năm"
    assert schedule_words(config.get("officer_digest")) == (
        "8:00 ngày 25 tháng 11 và 8:00 ngày 10 tháng 12 hằng năm")


def test_schedule_in_words_keeps_an_unusual_cron(tmp_path) -> None:
    override = tmp_path / "o.yaml"
    override.write_text('campaigns: {registration: {cron: "30 7 * 1 1"}}', encoding="utf-8")
    assert schedule_words(load_campaigns([override]).get("registration")) == "theo lịch “30 7 * 1 1” hằng năm"


@pytest.mark.parametrize(("now", "expected"), [
    (datetime(2027, 1, 4, 12, 0, tzinfo=VN), {
        "registration": "2027-01-05 08:00", "registration_followup": "2027-01-20 08:00",
        "assessment": "2027-11-01 08:00", "assessment_followup": "2027-11-15 08:00",
        "village_digest": "2027-11-01 08:00", "officer_digest": "2027-11-25 08:00"}),
    (NOW, {
        "registration": "2028-01-05 08:00", "registration_followup": "2028-01-20 08:00",
        "assessment": "2028-11-01 08:00", "assessment_followup": "2027-11-15 08:00",
        "village_digest": "2027-11-15 08:00", "officer_digest": "2027-11-25 08:00"}),
    # exactly at a firing: the next one is the following
    (datetime(2027, 11, 25, 8, 0, tzinfo=VN), {
        "registration": "2028-01-05 08:00", "registration_followup": "2028-01-20 08:00",
        "assessment": "2028-11-01 08:00", "assessment_followup": "2028-11-15 08:00",
        "village_digest": "2028-11-01 08:00", "officer_digest": "2027-12-10 08:00"}),
])
def test_next_run_for_a_fixed_clock(now: datetime, expected: dict[str, str]) -> None:
    lines = {line.id: line for line in campaign_lines(default_config(), now.astimezone(UTC))}
    assert {cid: line.next_run.astimezone(VN).strftime("%Y-%m-%d %H:%M") for cid, line in lines.items()} == expected
    assert lines["assessment"].label == "Kêu gọi tự đánh giá (tháng 11)" and lines["assessment"].enabled


def test_a_disabled_campaign_has_no_next_run(tmp_path) -> None:
    override = tmp_path / "o.yaml"
    override.write_text("campaigns: {officer_digest: {enabled: false}}", encoding="utf-8")
    lines = {line.id: line for line in campaign_lines(load_campaigns([override]), NOW)}
    assert lines["officer_digest"].next_run is None and not lines["officer_digest"].enabled


# --------------------------------------------------------------------------------------------- through HTTP


def outbox(s: Session, person: int, key: str, campaign: str | None, status: str) -> None:
    s.add(OutboxMessage(idempotency_key=key, channel="telegram", chat_id=f"c{person}", person_id=person,
                        payload={"text": "x"}, priority=10, status=status, campaign=campaign))


@pytest.fixture
def env(engine, tmp_path):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        b = seed(s, code=KIM_BANG, tag="b", media_dir=tmp_path / "media")
        # commune A: assessment 2027 — 2 queued + 1 sending, 3 sent, 1 unreachable, 1 failed
        states = ["queued", "queued", "sending", "sent", "sent", "sent", "unreachable", "failed"]
        people = list(a.persons.values())
        for i, status in enumerate(states):
            outbox(s, people[i % len(people)], f"assessment:2027:{people[i % len(people)]}:{i}", "assessment", status)
        # the same campaign a year earlier, and a campaign firing twice a year (key carries the date)
        outbox(s, a.persons["an"], f"assessment:2026:{a.persons['an']}:1", "assessment", "sent")
        outbox(s, a.persons["an"], f"village_digest@11-01:2027:{a.persons['an']}:1", "village_digest", "sent")
        outbox(s, a.persons["binh"], f"village_digest@11-15:2027:{a.persons['binh']}:1", "village_digest", "queued")
        # not a campaign: a reply in a conversation
        outbox(s, a.persons["an"], "reply:a:1", None, "sent")
        # commune B: many of everything, never counted for A's officer
        for i, status in enumerate(["queued", "sent", "sent", "unreachable", "failed"] * 4):
            pid = list(b.persons.values())[i % len(b.persons)]
            outbox(s, pid, f"assessment:2027:{pid}:b{i}", "assessment", status)
        outbox(s, b.persons["an"], f"registration:2027:{b.persons['an']}:1", "registration", "sent")
        s.add(CampaignRun(campaign="registration", year=2027, commune_code=KIM_BANG, started_at=T0, queued=777,
                          no_identity=333))
        s.add(CampaignRun(campaign="village_digest", year=2027, commune_code=None, started_at=T0.replace(day=15),
                          queued=42, no_identity=7))
        s.commit()
    app = make_app(engine, tmp_path)
    app.state.clock = lambda: NOW.astimezone(UTC)
    with TestClient(app) as client:
        login(client, a.username)
        yield client, a, b, engine


def test_delivery_counts_per_campaign_year_and_state(env) -> None:
    _, a, b, engine = env
    with Session(engine) as s:
        assert delivery_counts(s, GIA_LOC) == [
            Delivery("assessment", 2027, queued=3, sent=3, unreachable=1, failed=1),
            Delivery("village_digest", 2027, queued=1, sent=1),
            Delivery("assessment", 2026, sent=1),
        ]
        assert delivery_counts(s, KIM_BANG) == [
            Delivery("assessment", 2027, queued=4, sent=8, unreachable=4, failed=4),
            Delivery("registration", 2027, sent=1),
        ]


def test_campaigns_page_for_a_fixed_clock(env) -> None:
    client, a, b, _ = env
    resp = client.get("/review/campaigns")
    assert resp.status_code == 200
    page = text_of(resp.text)
    cards = [text_of(c).strip() for c in re.findall(r'<article class="card schedule">(.*?)</article>', resp.text, re.S)]
    assert cards == [
        "Kêu gọi đăng ký (tháng 1) registration ⏰ Lần tới: 05/01/2028 08:00 "
        "Lịch: 8:00 ngày 5 tháng 1 hằng năm Gửi cho: Mọi hộ, dòng họ, trưởng thôn đã tham gia bot",
        "Nhắc đăng ký lần 2 registration_followup ⏰ Lần tới: 20/01/2028 08:00 "
        "Lịch: 8:00 ngày 20 tháng 1 hằng năm Gửi cho: Người chưa đăng ký phấn đấu năm nay",
        "Kêu gọi tự đánh giá (tháng 11) assessment ⏰ Lần tới: 01/11/2028 08:00 "
        "Lịch: 8:00 ngày 1 tháng 11 hằng năm Gửi cho: Người đã đăng ký phấn đấu năm nay",
        "Nhắc người chưa gửi assessment_followup ⏰ Lần tới: 15/11/2027 08:00 "
        "Lịch: 8:00 ngày 15 tháng 11 hằng năm Gửi cho: Người đã đăng ký nhưng chưa gửi tự đánh giá",
        "Tin tóm tắt cho trưởng thôn village_digest ⏰ Lần tới: 15/11/2027 08:00 "
        "Lịch: 8:00 ngày 1 và 15 tháng 11 hằng năm Gửi cho: Trưởng thôn còn hộ chưa gửi",
        "Tin tóm tắt cho cán bộ xã officer_digest ⏰ Lần tới: 25/11/2027 08:00 "
        "Lịch: 8:00 ngày 25 tháng 11 và 8:00 ngày 10 tháng 12 hằng năm Gửi cho: Cán bộ xã",
    ]
    assert rows_of(resp.text, "deliveries") == [
        "Kêu gọi tự đánh giá (tháng 11) 2027 3 3 1 1 8",
        "Tin tóm tắt cho trưởng thôn 2027 1 1 0 0 2",
        "Kêu gọi tự đánh giá (tháng 11) 2026 0 1 0 0 1",
    ]
    assert rows_of(resp.text, "runs") == [  # newest first; B's run is not there
        "Kêu gọi tự đánh giá (tháng 11) 2027 20/11/2027 10:00 5 1 Xã Gia Lộc",
        "Tin tóm tắt cho trưởng thôn 2027 15/11/2027 10:00 42 7 Toàn hệ thống",
    ]
    assert "777" not in page and "333" not in page  # commune B's run


def test_commune_b_officer_sees_b_only(env, engine, tmp_path) -> None:
    _, _, b, _ = env
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, b.username)
        html = client.get("/review/campaigns").text
    assert rows_of(html, "deliveries") == [
        "Kêu gọi tự đánh giá (tháng 11) 2027 4 8 4 4 20",
        "Kêu gọi đăng ký (tháng 1) 2027 0 1 0 0 1",
    ]
    assert "777" in text_of(html)


def test_another_communes_page_is_not_found(env) -> None:
    client, _, b, _ = env
    assert client.get(f"/review/campaigns?commune={b.code}").status_code == 404


def test_a_broken_campaign_file_is_reported_not_a_crash(env, tmp_path) -> None:
    client, _, _, _ = env
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "default.yaml").write_text("campaigns: {registration: {cron: 'nope'}}",
                                                         encoding="utf-8")
    resp = client.get("/review/campaigns")
    assert resp.status_code == 200
    assert "Tệp cấu hình nhắc việc có lỗi" in resp.text and "bad cron" in resp.text
    assert len(rows_of(resp.text, "deliveries")) == 3
