"""JSON API /api/v1 with a bearer token: dashboard, list, one submission, decisions; documented at /docs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from models.tables import Assessment, Officer, OutboxMessage, ReviewDecision
from tests.review_seed import GIA_LOC, make_app, seed
from webhook import auth


@pytest.fixture
def api(engine, tmp_path):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        token = auth.new_api_token(s, s.get(Officer, a.officer_id))
        s.commit()
    with TestClient(make_app(engine, tmp_path), headers={"Authorization": f"Bearer {token}"}) as client:
        yield client, a, engine


def test_me(api) -> None:
    client, a, _ = api
    assert client.get("/api/v1/me").json() == {"id": a.officer_id, "username": "canbo_a", "name": "Cán bộ A",
                                               "communes": [GIA_LOC]}


def test_dashboard(api) -> None:
    client, a, _ = api
    body = client.get(f"/api/v1/communes/{GIA_LOC}/dashboard?year=2027").json()
    assert body["commune"] == {"code": GIA_LOC, "name": "Xã Gia Lộc"}
    gd = body["titles"][0]
    assert gd == {"title": "gia_dinh", "name": "Gia đình học tập", "subjects": 6, "registered": 6, "submitted": 6,
                  "proposed": 5, "recognised": 1, "returned": 1, "share": 16.7, "target": 70.0, "reached": False}
    assert [v["name"] for v in body["villages"]] == ["Thôn Đoài", "Thôn Đông"]
    assert body["blockers"]["unreachable"][0]["name"] == "Đỗ Thị Dung"
    assert body["blockers"]["returned"] == 1 and body["blockers"]["pending_leaders"] == 1


def test_list_and_filters(api) -> None:
    client, a, _ = api
    pending = client.get("/api/v1/assessments?year=2027").json()
    assert [r["subject"] for r in pending] == ["Nguyễn Văn An", "Lê Thị Bình", "Phạm Văn Cường",
                                               "Hoàng Thị Giang", "Thôn Đông"]
    assert pending[0] == {"id": a.assessments["submitted"], "title": "gia_dinh", "subject": "Nguyễn Văn An",
                          "subject_type": "household", "village_id": a.villages[0], "village": "Thôn Đông",
                          "status": "submitted", "total": 100, "max": 100, "proposed_pass": True, "proxy": False,
                          "submitted_at": "2027-11-20T03:00:00+00:00", "evidence": 1}
    assert len(client.get("/api/v1/assessments?year=2027&state=all&title=cong_dong").json()) == 1
    assert client.get("/api/v1/assessments?state=nope").status_code == 422
    villages = client.get(f"/api/v1/communes/{GIA_LOC}/villages").json()
    assert [(v["name"], v["invite_code"]) for v in villages] == [("Thôn Đoài", "doaia"), ("Thôn Đông", "donga")]


def test_one_submission(api) -> None:
    client, a, _ = api
    body = client.get(f"/api/v1/assessments/{a.assessments['proxy']}").json()
    assert body["proposal"] == {"total": 100, "max": 100, "passed": True, "need": 80, "reasons": []}
    assert body["entered_by"] == {"name": "Trần Văn Trưởng", "proxy": True, "proxy_by": "Trần Văn Trưởng"}
    assert body["criteria_status"] == "partial" and body["pass_status"] == "draft"
    c32 = next(c for c in body["criteria"] if c["id"] == "c3_2")
    assert (c32["status"], c32["max"]) == ("draft", c32["points"])
    assert client.get("/api/v1/assessments/999999").status_code == 404


def test_decision_through_the_api(api) -> None:
    client, a, engine = api
    aid = a.assessments["submitted"]
    bad = client.post(f"/api/v1/assessments/{aid}/decisions", json={"decision": "return"})
    assert bad.status_code == 422 and bad.json()["detail"] == "Cần ghi lý do để gia đình biết phải làm gì."
    assert client.post(f"/api/v1/assessments/{aid}/decisions", json={"decision": "delete"}).status_code == 422
    resp = client.post(f"/api/v1/assessments/{aid}/decisions", json={"decision": "return", "reason": "Ảnh mờ."})
    assert resp.status_code == 201
    body = resp.json()
    assert body == {"id": body["id"], "assessment_id": aid, "decision": "return", "reason": "Ảnh mờ.",
                    "status": "returned", "notified": True}
    with Session(engine) as s:
        assert s.get(Assessment, aid).status == "returned"
        assert s.exec(select(ReviewDecision)).one().officer_id == a.officer_id
        assert s.exec(select(OutboxMessage)).one().payload["text"].endswith("\"Ảnh mờ.\"")
    history = client.get(f"/api/v1/assessments/{aid}").json()["decisions"]
    assert [(d["decision"], d["reason"]) for d in history] == [("return", "Ảnh mờ.")]


def test_api_is_documented(api) -> None:
    client, _, _ = api
    schema = client.get("/openapi.json").json()
    for path in ("/api/v1/communes/{code}/dashboard", "/api/v1/assessments", "/api/v1/assessments/{assessment_id}",
                 "/api/v1/assessments/{assessment_id}/decisions"):
        assert path in schema["paths"]
    assert not any(p.startswith("/review") for p in schema["paths"])
    assert client.get("/docs").status_code == 200


def test_api_queue_states_match_the_review_queue() -> None:
    from typing import get_args

    from webhook import admin, api

    assert set(get_args(api.QueueState)) == set(admin.QUEUE_STATES)
