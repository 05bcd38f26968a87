"""An officer of commune A sees nothing of commune B: every /review and /api/v1 route with a path parameter,
enumerated from app.routes, answers 404 for B's ids (pages with a session, API with a bearer token)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from models.tables import Assessment, Officer
from tests.review_seed import GIA_LOC, KIM_BANG, csrf_for, login, make_app, seed
from webhook import auth

# Path parameters that name no commune resource, and why.
NOT_RESOURCES = {
    ("/review/login/{token}", "token"): "a sign-in link belongs to an officer, not to a commune",
}


def iter_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, looking inside included routers (FastAPI ≥ 0.165 keeps them as _IncludedRouter)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from iter_routes(inner.routes)
        elif hasattr(route, "path"):
            yield route


def scoped_routes(app: Any) -> list[tuple[str, str, list[str]]]:
    out = []
    for route in iter_routes(app.routes):
        path = route.path
        if not (path.startswith("/review") or path.startswith("/api/v1")):
            continue
        params = list(route.param_convertors)
        if not params:
            continue
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            out.append((method, path, params))
    return out


@pytest.fixture
def world(engine, tmp_path):
    with Session(engine) as s:
        a = seed(s, code=GIA_LOC, tag="a", media_dir=tmp_path / "media")
        b = seed(s, code=KIM_BANG, tag="b", media_dir=tmp_path / "media")
        officer = s.get(Officer, a.officer_id)
        token = auth.new_api_token(s, officer)
        s.commit()
    app = make_app(engine, tmp_path)
    return app, a, b, token


def b_ids(b) -> dict[str, int]:
    return {
        "assessment_id": b.assessments["submitted"],
        "evidence_id": b.evidence[0],
        "village_id": b.villages[0],
        "grant_id": b.grant_id,
        "code": b.code,
    }


def test_route_list_is_not_empty(world) -> None:
    app, *_ = world
    paths = {p for _, p, _ in scoped_routes(app)}
    assert "/review/assessments/{assessment_id}" in paths
    assert "/api/v1/assessments/{assessment_id}/decisions" in paths
    assert len(paths) >= 12


def test_every_parameterised_route_hides_commune_b(world, engine) -> None:
    app, a, b, token = world
    ids = b_ids(b)
    checked = []
    with TestClient(app) as client:
        login(client, a.username)
        csrf = csrf_for(client)
        for method, path, params in scoped_routes(app):
            values = {}
            for name in params:
                if (path, name) in NOT_RESOURCES:
                    break
                assert name in ids, f"{method} {path}: no commune-B value for path parameter {name!r}; add one"
                values[name] = ids[name]
            else:
                url = path.format(**values)
                if path.startswith("/api/v1"):
                    headers = {"Authorization": f"Bearer {token}"}
                    body = {"json": {"decision": "recognise", "reason": "x"}} if method == "POST" else {}
                    resp = client.request(method, url, headers=headers, **body)
                else:
                    data = {"csrf": csrf, "decision": "recognise", "reason": "x", "year": "2027",
                            "confirm": "yes", "action": "grant"} if method == "POST" else None
                    resp = client.request(method, url, data=data)
                assert resp.status_code == 404, f"{method} {url} answered {resp.status_code}"
                checked.append((method, path))
    assert len(checked) >= 12
    with Session(engine) as s:  # nothing of B changed
        row = s.get(Assessment, b.assessments["submitted"])
        assert row.status == "submitted"


def test_the_same_routes_answer_for_commune_a(world) -> None:
    """The 404s above come from scoping, not from broken routes: A's own ids answer."""
    app, a, _, token = world
    ids = b_ids(a)
    with TestClient(app) as client:
        login(client, a.username)
        for method, path, params in scoped_routes(app):
            if method != "GET" or any((path, n) in NOT_RESOURCES for n in params):
                continue
            url = path.format(**{n: ids[n] for n in params})
            headers = {"Authorization": f"Bearer {token}"} if path.startswith("/api/v1") else {}
            resp = client.get(url, headers=headers)
            if path.endswith(("/certificate", "/certificate.pdf")):
                assert resp.status_code == 404  # "submitted" is not recognised: no certificate yet
                continue
            assert resp.status_code == 200, f"GET {url} answered {resp.status_code}"


def test_query_parameters_are_scoped_too(world) -> None:
    app, a, b, token = world
    with TestClient(app) as client:
        login(client, a.username)
        for url in (f"/review/?commune={b.code}", f"/review/queue?commune={b.code}",
                    f"/review/queue?village={b.villages[0]}", f"/review/export.xlsx?commune={b.code}",
                    f"/review/villages?commune={b.code}", f"/review/campaigns?commune={b.code}",
                    f"/review/print/villages?commune={b.code}", f"/review/print/certificates?commune={b.code}"):
            assert client.get(url).status_code == 404, url
        resp = client.get(f"/api/v1/assessments?commune={b.code}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 404
        mine = client.get("/api/v1/assessments?state=all&year=2027", headers={"Authorization": f"Bearer {token}"})
        assert {row["id"] for row in mine.json()} <= set(a.assessments.values())
        assert len(mine.json()) == 7


def test_api_without_token_is_unauthorised(world) -> None:
    app, a, _, _ = world
    with TestClient(app) as client:
        login(client, a.username)  # a session cookie is not an API credential
        assert client.get("/api/v1/me").status_code == 401
        assert client.get("/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
        with Session(app.state.engine) as s:
            assert s.exec(select(Officer)).first() is not None
