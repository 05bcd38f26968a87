"""Review pages through HTTP: dashboard figures, queue, a submission in plain words, photos, decisions that
reach the family, bulk approval, villages, printables, campaigns, account."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from models.tables import Assessment, OutboxMessage, ReviewDecision, RoleGrant
from tests.review_seed import GIA_LOC, csrf_for, jpeg_bytes, login, make_app, seed


@pytest.fixture
def env(engine, tmp_path):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as client:
        login(client, a.username)
        yield client, a, engine


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_dashboard_counts_per_title_and_village(env) -> None:
    client, a, _ = env
    resp = client.get("/review/?year=2027")
    assert resp.status_code == 200
    page = text_of(resp.text)
    # gia_dinh: 6 households, 6 registered and submitted, 5 proposed (one failing), 1 recognised → 16,7% of 70%
    assert "Gia đình học tập" in page
    assert "16,7% được công nhận · chỉ tiêu 70% Chưa đạt" in page
    assert "Tổng số 6 Đăng ký 6 Đã gửi 6 Đề xuất đạt 5 Công nhận 1" in page
    assert "Thôn Đông 4 4 4 3 0 0% 0 0 Đã gửi Xét cả thôn (2)" in page
    assert "Thôn Đoài 2 2 2 2 1 50% 1 1" in page
    assert "1 người chưa liên lạc được qua bot (chặn bot hoặc đổi số): Đỗ Thị Dung (Thôn Đoài)" in page
    assert "1 hồ sơ đã trả lại" in page
    assert "1 đăng ký phấn đấu nhưng chưa gửi" in page  # the clan
    assert "1 người xin làm trưởng thôn" in page
    assert 'style="width: 16.7%"' in resp.text and 'style="left: 70.0%"' in resp.text


def test_dashboard_uses_the_commune_targets(env) -> None:
    client, a, engine = env
    from models.tables import Commune

    with Session(engine) as s:
        commune = s.get(Commune, GIA_LOC)
        commune.targets = {"2027": {"gia_dinh": 15}}
        s.add(commune)
        s.commit()
    page = text_of(client.get("/review/?year=2027").text)
    assert "16,7% được công nhận · chỉ tiêu 15% Đạt" in page
    assert "chỉ tiêu 60%" in page  # dong_ho default


def test_queue_filters(env) -> None:
    client, a, _ = env
    page = client.get("/review/queue?year=2027").text
    names = re.findall(r'class="item-name">([^<]+)<', page)
    assert names == ["Nguyễn Văn An", "Lê Thị Bình", "Phạm Văn Cường", "Hoàng Thị Giang", "Thôn Đông"]
    page = client.get(f"/review/queue?year=2027&title=gia_dinh&village={a.villages[1]}&state=all").text
    assert re.findall(r'class="item-name">([^<]+)<', page) == ["Đỗ Thị Dung", "Vũ Văn Em"]
    page = client.get("/review/queue?year=2027&state=returned").text
    assert re.findall(r'class="item-name">([^<]+)<', page) == ["Đỗ Thị Dung"]
    assert "Trưởng thôn nhập hộ" in client.get("/review/queue?year=2027").text


def test_submission_in_plain_words_with_draft_marks_and_photo(env) -> None:
    client, a, _ = env
    resp = client.get(f"/review/assessments/{a.assessments['submitted']}")
    assert resp.status_code == 200
    page = text_of(resp.text)
    assert "Nguyễn Văn An" in page and "Gia đình học tập 2027 · Thôn Đông" in page
    assert "Tạm tính 100/100 điểm — đề xuất: ĐẠT (cần 80, Tạm thời (draft) )" in page
    assert ("c1_1 Trẻ em trong độ tuổi phổ cập đều được đến trường, hoàn thành phổ cập giáo dục (trừ trường hợp "
            "ốm đau, bệnh tật, không có khả năng học tập) Có 10/10 điểm") in page
    assert page.count("Tạm thời (draft)") >= 6  # c2_3, c3_1, c3_2, c4_1, c4_2 + the pass mark
    assert "Tự khai qua bot: Nguyễn Văn An" in page
    assert "Chưa có xác nhận của trưởng thôn" in page
    assert "📷 02/10/2027 08:15" in page and "20.8690,106.2345" in page
    ev = a.evidence[0]
    thumb = client.get(f"/review/evidence/{ev}/thumb")
    full = client.get(f"/review/evidence/{ev}/photo")
    assert thumb.status_code == full.status_code == 200
    assert full.content == jpeg_bytes() and full.headers["content-type"] == "image/jpeg"
    assert len(thumb.content) < len(full.content)


def test_proxy_and_leader_confirmation_are_shown(env) -> None:
    client, a, _ = env
    page = text_of(client.get(f"/review/assessments/{a.assessments['proxy']}").text)
    assert "Trưởng thôn Trần Văn Trưởng nhập hộ (gia đình không dùng điện thoại)" in page
    page = text_of(client.get(f"/review/assessments/{a.assessments['confirmed1']}").text)
    assert "Trưởng thôn Trần Văn Trưởng đã xác nhận lúc 20/11/2027 10:00" in page
    page = text_of(client.get(f"/review/assessments/{a.assessments['failing']}").text)
    assert "CHƯA ĐẠT" in page and "Tiêu chí bắt buộc c1_1 chưa đạt" in page and "Không 0/10 điểm" in page


def test_return_with_reason_reaches_the_family_in_chat(env) -> None:
    client, a, engine = env
    aid = a.assessments["submitted"]
    resp = client.post(f"/review/assessments/{aid}/decisions", follow_redirects=False,
                       data={"csrf": csrf_for(client), "decision": "return",
                             "reason": "Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn."})
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/review/assessments/{aid}?done=return"
    with Session(engine) as s:
        row = s.get(Assessment, aid)
        decision = s.exec(select(ReviewDecision).where(ReviewDecision.assessment_id == aid)).one()
        message = s.exec(select(OutboxMessage)).one()
    assert row.status == "returned"
    assert (decision.decision, decision.reason, decision.officer_id) == (
        "return", "Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn.", a.officer_id)
    assert message.idempotency_key == f"decision:{decision.id}"
    assert (message.channel, message.chat_id, message.person_id, message.priority) == (
        "telegram", f"a-chat-{a.persons['an']}", a.persons["an"], 0)
    assert message.payload == {
        "text": "⚠️ Hội Khuyến học xã cần bổ sung cho hồ sơ \"Gia đình học tập\" 2027:\n"
                "\"Ảnh tủ sách bị mờ, xin gửi lại ảnh rõ hơn.\"",
        "buttons": [{"label": "Gửi ảnh mới", "value": "cmd:bosung"}, {"label": "Xem hồ sơ", "value": "cmd:trangthai"}],
        "request_contact": False,
    }
    page = text_of(client.get(resp.headers["location"]).text)
    assert "Đã ghi quyết định" in page
    assert "Trả lại để bổ sung — Cán bộ A," in page and "Ảnh tủ sách bị mờ" in page


def test_return_and_reject_need_a_reason(env) -> None:
    client, a, engine = env
    aid = a.assessments["submitted"]
    for decision in ("return", "reject"):
        resp = client.post(f"/review/assessments/{aid}/decisions",
                           data={"csrf": csrf_for(client), "decision": decision, "reason": "  "})
        assert resp.status_code == 400
        assert "Cần ghi lý do" in resp.text
    resp = client.post(f"/review/assessments/{aid}/decisions", data={"csrf": csrf_for(client), "decision": "xoa"})
    assert resp.status_code == 400
    with Session(engine) as s:
        assert s.exec(select(ReviewDecision)).all() == []
        assert s.exec(select(OutboxMessage)).all() == []
        assert s.get(Assessment, aid).status == "submitted"


def test_decisions_are_appended_never_overwritten(env) -> None:
    client, a, engine = env
    aid = a.assessments["failing"]
    for decision, reason in (("reject", "Chưa đủ điểm."), ("recognise", "")):
        client.post(f"/review/assessments/{aid}/decisions",
                    data={"csrf": csrf_for(client), "decision": decision, "reason": reason})
    with Session(engine) as s:
        rows = s.exec(select(ReviewDecision).order_by(col(ReviewDecision.id))).all()
        messages = s.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))).all()
        assert s.get(Assessment, aid).status == "recognised"
    assert [(r.decision, r.reason) for r in rows] == [("reject", "Chưa đủ điểm."), ("recognise", "")]
    assert messages[0].payload["text"] == ("Hội Khuyến học xã đã xét hồ sơ \"Gia đình học tập\" 2027: năm nay chưa "
                                           "công nhận.\nLý do: \"Chưa đủ điểm.\"")
    assert messages[1].payload["text"].startswith("✅ Chúc mừng!")
    page = text_of(client.get(f"/review/assessments/{aid}").text)
    assert page.index("Công nhận — Cán bộ A") < page.index("Không công nhận — Cán bộ A")  # newest first


def test_family_without_phone_hears_through_the_village_leader(env) -> None:
    client, a, engine = env
    aid = a.assessments["proxy"]
    client.post(f"/review/assessments/{aid}/decisions",
                data={"csrf": csrf_for(client), "decision": "return", "reason": "Cần ảnh góc học tập."})
    with Session(engine) as s:
        message = s.exec(select(OutboxMessage)).one()
    assert message.person_id == a.persons["leader"]
    assert message.payload["text"] == ("⚠️ Hội Khuyến học xã cần bổ sung cho hồ sơ \"Gia đình học tập\" 2027 của "
                                       "Hoàng Thị Giang:\n\"Cần ảnh góc học tập.\"")


def test_bulk_approval_of_a_village_with_one_confirmation(env) -> None:
    client, a, engine = env
    village = a.villages[0]
    page = client.get(f"/review/villages/{village}/bulk?year=2027")
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Lê Thị Bình — 100/100 điểm" in text
    assert "Cần xét từng hồ sơ (1)" in text and "Phạm Văn Cường" in text
    ids = re.findall(r'name="ids" value="(\d+)"', page.text)
    assert ids == [str(a.assessments["confirmed1"])]
    # without the confirmation tick nothing happens
    resp = client.post(f"/review/villages/{village}/bulk", follow_redirects=False,
                       data={"csrf": csrf_for(client), "year": "2027", "ids": ids})
    assert resp.status_code == 303
    with Session(engine) as s:
        assert s.exec(select(ReviewDecision)).all() == []
    # a failing id smuggled into the form is ignored
    resp = client.post(f"/review/villages/{village}/bulk", follow_redirects=False,
                       data={"csrf": csrf_for(client), "year": "2027", "confirm": "yes",
                             "ids": [*ids, str(a.assessments["failing"])]})
    assert resp.status_code == 303
    assert "bulk=1" in resp.headers["location"]
    with Session(engine) as s:
        rows = s.exec(select(ReviewDecision)).all()
        assert [(r.assessment_id, r.decision) for r in rows] == [(a.assessments["confirmed1"], "recognise")]
        assert s.get(Assessment, a.assessments["failing"]).status == "confirmed"
        assert len(s.exec(select(OutboxMessage)).all()) == 1


def test_villages_page_confirms_a_pending_leader(env) -> None:
    client, a, engine = env
    page = text_of(client.get("/review/villages").text)
    assert "Ngô Văn Mới xin làm Trưởng thôn / Chi hội — Thôn Đoài" in page
    assert "Chưa liên lạc được qua bot (1)" in page and "Đỗ Thị Dung — Thôn Đoài (chặn bot)" in page
    resp = client.post(f"/review/grants/{a.grant_id}", data={"csrf": csrf_for(client), "action": "grant"},
                       follow_redirects=False)
    assert resp.status_code == 303
    with Session(engine) as s:
        grant = s.get(RoleGrant, a.grant_id)
    assert grant.status == "granted" and grant.decided_at is not None
    assert "Không có ai chờ xác nhận" in client.get("/review/villages").text


def test_village_qr_print_page(env) -> None:
    client, a, _ = env
    page = client.get(f"/review/villages/{a.villages[0]}/print").text
    assert "<svg" in page and "Thôn Đông" in page
    assert "http://testserver/simulator?start=v_donga" in page
    assert page.count("<li>") == 3
    assert client.get("/review/print/villages").text.count('class="a4 qr-page"') == 2


def test_certificates(env) -> None:
    client, a, _ = env
    page = text_of(client.get(f"/review/assessments/{a.assessments['recognised']}/certificate").text)
    assert "GIẤY CÔNG NHẬN" in page and "“GIA ĐÌNH HỌC TẬP” NĂM 2027" in page and "Vũ Văn Em" in page
    page = client.get("/review/print/certificates?year=2027").text
    assert page.count('class="a4 landscape certificate"') == 1


def test_campaigns_page_lists_runs(env) -> None:
    client, _, _ = env
    page = text_of(client.get("/review/campaigns").text)
    assert "Kêu gọi tự đánh giá (tháng 11) 2027 20/11/2027 10:00 5 1" in page


def test_account_page_makes_an_api_token_shown_once(env) -> None:
    client, _, _ = env
    resp = client.post("/review/account/api-token", data={"csrf": csrf_for(client)})
    token = re.search(r'<code class="token">(hct_[^<]+)</code>', resp.text).group(1)
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["username"] == "canbo_a"
    assert token not in client.get("/review/account").text
