"""Bug (fixed in webhook/api.py): a NUL character in the API's free-text inputs made it answer 500 on PostgreSQL.

Found by the schemathesis run (tests/reliability/test_api_schemathesis.py) on PostgreSQL:
`GET /api/v1/assessments?title=%00` reached the database, whose text values refuse "\\x00" (psycopg.DataError),
and the API answered 500. The same held for a decision's `reason` in its JSON body. `title` is now one of the
titles' ids (lower-case letters and "_", as in criteria/*.yaml) and `reason` refuses NUL: both answer 422 as
any invalid input does, documented in the OpenAPI schema. Runs on SQLite and, with HOCTAP_TEST_DATABASE_URL,
on PostgreSQL (where it failed).
"""

from __future__ import annotations

from sqlmodel import Session, select

from models.tables import Assessment, ReviewDecision
from tests.test_api_review import api  # noqa: F401 - the fixture


def test_nul_in_a_query_or_a_reason_is_refused_not_fatal(api) -> None:  # noqa: F811
    client, a, engine = api
    assert client.get("/api/v1/assessments?state=all&title=%00").status_code == 422
    assert client.get("/api/v1/assessments?state=all&title=gia%00dinh").status_code == 422
    assert client.get("/api/v1/assessments?state=all&title=gia_dinh").status_code == 200
    aid = a.assessments["submitted"]
    refused = client.post(f"/api/v1/assessments/{aid}/decisions", json={"decision": "return", "reason": "Ảnh\x00 mờ."})
    assert refused.status_code == 422
    with Session(engine) as s:
        assert s.get(Assessment, aid).status == "submitted"
        assert s.exec(select(ReviewDecision)).all() == []
    schema = client.get("/openapi.json").json()
    title = next(p for p in schema["paths"]["/api/v1/assessments"]["get"]["parameters"] if p["name"] == "title")
    assert title["schema"]["pattern"]


def test_nul_in_the_review_pages_forms_is_dropped_not_fatal(engine, tmp_path) -> None:
    """The review pages' forms: a reason typed with a NUL in it is kept without it (the family gets the text),
    a user name with one is a failed sign-in, not a 500."""
    from fastapi.testclient import TestClient

    from tests.review_seed import GIA_LOC, csrf_for, csrf_of, login, make_app, seed

    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as client:
        page = client.get("/review/login")
        refused = client.post("/review/login", data={"username": "canbo\x00_a", "password": "x",
                                                     "csrf": csrf_of(page.text), "next": "/review/"})
        assert refused.status_code == 401 and "Đăng nhập" in refused.text
        login(client, a.username)
        aid = a.assessments["submitted"]
        resp = client.post(f"/review/assessments/{aid}/decisions", follow_redirects=False,
                           data={"csrf": csrf_for(client), "decision": "return", "reason": "Ảnh\x00 mờ."})
        assert resp.status_code == 303
    with Session(engine) as s:
        assert s.exec(select(ReviewDecision)).one().reason == "Ảnh mờ."
