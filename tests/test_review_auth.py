"""Officer sign-in: passwords, one-time links, sessions, CSRF, rate limit, sign-out, `officer add`."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from bot.login_links import create_login_link
from models.tables import Commune, LoginToken, Officer, OfficerCommune, Province
from tests.review_seed import PASSWORD, T0, csrf_for, csrf_of, login, make_app, seed
from webhook import admin, auth


@pytest.fixture
def client(engine, tmp_path):
    with Session(engine) as s:
        seed(s, tag="a")
        s.commit()
    with TestClient(make_app(engine, tmp_path)) as c:
        yield c


def test_visitor_is_sent_to_sign_in(client) -> None:
    resp = client.get("/review/queue?year=2027", follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"] == "/review/login?next=/review/queue%3Fyear%3D2027"


def test_password_sign_in_opens_dashboard(client) -> None:
    resp = login(client, "canbo_a")
    assert resp.headers["location"] == "/review/"
    cookie = resp.headers["set-cookie"]
    assert "hoctap_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = client.get("/review/")
    assert page.status_code == 200
    assert "Tổng quan năm 2027" in page.text


def test_wrong_password_is_refused(client) -> None:
    page = client.get("/review/login")
    resp = client.post("/review/login", data={"username": "canbo_a", "password": "sai", "csrf": csrf_of(page.text)})
    assert resp.status_code == 401
    assert "chưa đúng" in resp.text
    assert client.get("/review/", follow_redirects=False).status_code == 303


def test_sign_in_without_csrf_token_is_forbidden(client) -> None:
    client.get("/review/login")
    resp = client.post("/review/login", data={"username": "canbo_a", "password": PASSWORD})
    assert resp.status_code == 403
    resp = client.post("/review/login", data={"username": "canbo_a", "password": PASSWORD, "csrf": "0" * 64})
    assert resp.status_code == 403


def test_csrf_token_of_another_browser_is_refused(engine, tmp_path, client) -> None:
    token = csrf_of(client.get("/review/login").text)
    with TestClient(make_app(engine, tmp_path)) as other:
        other.get("/review/login")  # its own cookie, a different seed
        resp = other.post("/review/login", data={"username": "canbo_a", "password": PASSWORD, "csrf": token})
    assert resp.status_code == 403


def test_every_signed_in_post_needs_the_token(client) -> None:
    login(client, "canbo_a")
    for path in ("/review/logout", "/review/assessments/1/decisions", "/review/account/api-token",
                 "/review/villages/1/bulk", "/review/grants/1", "/review/villages/import"):
        assert client.post(path, data={"decision": "recognise"}).status_code == 403, path


def test_five_failures_lock_the_username_for_this_address(client) -> None:
    token = csrf_of(client.get("/review/login").text)
    for _ in range(5):
        resp = client.post("/review/login", data={"username": "canbo_a", "password": "sai", "csrf": token})
        assert resp.status_code == 401
    resp = client.post("/review/login", data={"username": "canbo_a", "password": PASSWORD, "csrf": token})
    assert resp.status_code == 429
    assert "15 phút" in resp.text
    # another username from the same address is not locked
    resp = client.post("/review/login", data={"username": "khac", "password": "sai", "csrf": token})
    assert resp.status_code == 401


def test_lock_ends_after_fifteen_minutes(client, engine) -> None:
    token = csrf_of(client.get("/review/login").text)
    now = [T0]
    client.app.state.clock = lambda: now[0]
    for _ in range(5):
        client.post("/review/login", data={"username": "canbo_a", "password": "sai", "csrf": token})
    now[0] = T0 + timedelta(minutes=15, seconds=1)
    resp = client.post("/review/login", data={"username": "canbo_a", "password": PASSWORD, "csrf": token},
                       follow_redirects=False)
    assert resp.status_code == 303


def _link(engine, officer_id: int, now=T0) -> str:
    with Session(engine) as s:
        url = create_login_link(s, officer_id, "http://testserver", now)
        s.commit()
    return url.removeprefix("http://testserver")


def test_one_time_link_signs_in_once(client, engine) -> None:
    with Session(engine) as s:
        officer_id = s.exec(select(Officer.id).where(Officer.username == "canbo_a")).one()
        stored = s.exec(select(LoginToken)).all()
    assert stored == []
    path = _link(engine, officer_id)
    assert path.startswith("/review/login/")
    client.app.state.clock = lambda: T0 + timedelta(minutes=5)
    page = client.get(path)  # a link preview must not burn it
    assert page.status_code == 200
    assert client.get("/review/", follow_redirects=False).status_code == 303
    resp = client.post(path, data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/review/"
    assert client.get("/review/").status_code == 200
    client.cookies.delete("hoctap_session")
    again = client.post(path, data={"csrf": csrf_of(client.get(path).text)}, follow_redirects=False)
    assert again.status_code == 400
    assert "đã dùng hoặc đã hết hạn" in again.text
    with Session(engine) as s:
        row = s.exec(select(LoginToken)).one()
    assert row.used_at is not None
    assert path.rsplit("/", 1)[1] not in row.token_hash  # only the hash is stored


def test_expired_link_is_refused(client, engine) -> None:
    with Session(engine) as s:
        officer_id = s.exec(select(Officer.id).where(Officer.username == "canbo_a")).one()
    path = _link(engine, officer_id)
    client.app.state.clock = lambda: T0 + timedelta(minutes=15)
    resp = client.post(path, data={"csrf": csrf_of(client.get(path).text)}, follow_redirects=False)
    assert resp.status_code == 400


def test_sign_out_ends_the_session(client) -> None:
    login(client, "canbo_a")
    resp = client.post("/review/logout", data={"csrf": csrf_for(client)}, follow_redirects=False)
    assert resp.status_code == 303
    assert client.get("/review/", follow_redirects=False).status_code == 303


def test_tampered_session_cookie_is_ignored(client) -> None:
    login(client, "canbo_a")
    value = client.cookies.get("hoctap_session")
    client.cookies.set("hoctap_session", value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1])
    assert client.get("/review/", follow_redirects=False).status_code == 303


def test_session_cookie_is_secure_behind_https(engine, tmp_path) -> None:
    with Session(engine) as s:
        seed(s, tag="a")
        s.commit()
    with TestClient(make_app(engine, tmp_path, public_base_url="https://hoctap.example.vn"),
                    base_url="https://testserver") as c:
        resp = login(c, "canbo_a")
    assert "Secure" in resp.headers["set-cookie"]


def test_secret_key_file_is_made_once(tmp_path) -> None:
    from models.settings import get_settings

    settings = get_settings(data_dir=tmp_path, secret_key="")
    first = auth.secret_key(settings)
    assert auth.secret_key(settings) == first
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"


def test_officer_add_command_creates_commune_province_and_token(engine, db_url, tmp_path, capsys) -> None:
    from models.settings import get_settings

    settings = get_settings(data_dir=tmp_path, database_url=db_url, public_base_url="https://x.vn")
    args = argparse.Namespace(commune=10999, name="Nguyễn Thị Hoa", username="Hoa.GL", phone="0912345678",
                              password="mot-mat-khau", api_token=True)
    assert admin.officer_add_command(settings, args) == 0
    out = capsys.readouterr().out
    assert "Mã API (chỉ hiện một lần): hct_" in out
    assert "https://x.vn/review/login/" in out
    with Session(engine) as s:
        officer = s.exec(select(Officer).where(Officer.username == "hoa.gl")).one()
        assert officer.password_hash.startswith("$argon2")
        assert officer.api_token_hash and len(officer.api_token_hash) == 64
        assert s.get(Commune, 10999).name == "Xã Gia Lộc"
        assert s.get(Province, s.get(Commune, 10999).province_code).name == "Thành phố Hải Phòng"
        assert [r.commune_code for r in s.exec(select(OfficerCommune))] == [10999]


def test_officer_add_refuses_unknown_commune(engine, db_url, tmp_path, capsys) -> None:
    from models.settings import get_settings

    settings = get_settings(data_dir=tmp_path, database_url=db_url)
    args = argparse.Namespace(commune=1, name="X", username="x", phone="", password="p", api_token=False)
    assert admin.officer_add_command(settings, args) == 2
    assert "Không có xã/phường mã 1" in capsys.readouterr().err
