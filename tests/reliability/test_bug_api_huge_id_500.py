"""Bug: an id or commune code past 64 bits in an /api/v1 path answers 500 (found by Schemathesis).

GET /api/v1/communes/9223372036854775808/dashboard → SQLite's driver raises OverflowError ("Python int too
large to convert to SQLite INTEGER"), PostgreSQL's "integer out of range"; FastAPI accepted the value as an
``int`` path parameter. Where: webhook/api.py, the int path parameters (commune code, assessment id, ...).
Suggested fix: bound them in the signature, e.g. ``code: Annotated[int, Path(ge=1, le=2**31 - 1)]`` (ids
and codes are far below), so FastAPI answers 422 — or treat out-of-range as 404 in one dependency.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from models.tables import Officer
from tests.review_seed import GIA_LOC, make_app, seed
from webhook import auth


def test_huge_ids_are_refused_not_500(engine, tmp_path: Path) -> None:
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        token = auth.new_api_token(s, s.get(Officer, a.officer_id))
        s.commit()
    app = make_app(engine, tmp_path)
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {token}"}) as client:
        paths = [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/api/v1") and "{" in p]
        statuses = {}
        for path in paths:
            url = path
            while "{" in url:
                start, end = url.index("{"), url.index("}")
                url = url[:start] + str(2**63) + url[end + 1 :]
            statuses[url] = client.get(url).status_code
    assert paths
    assert all(status < 500 for status in statuses.values()), statuses
