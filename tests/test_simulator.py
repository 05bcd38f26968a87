"""The browser simulator's API: the same flows and unit of work as Telegram and Zalo, as channel "web"."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import Session, select

from bot.outbox import PRIORITY_BULK, enqueue
from flows.i18n import t
from flows.types import Say
from models.settings import get_settings
from models.tables import (
    AuditLog,
    ChatIdentity,
    Evidence,
    Household,
    InboxUpdate,
    OutboxMessage,
    Person,
    Registration,
)
from webhook.app import create_app
from webhook.demo import PERSONAS, _demo_jpeg, ensure_demo

NOW = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam, the assessment month


def make_client(engine, tmp_path, **overrides) -> TestClient:
    settings = get_settings(data_dir=tmp_path, database_url="", telegram_bot_token="", zalo_bot_token="",
                            zalo_oa_app_id="", **overrides)
    ensure_demo(engine, settings, now=NOW)
    app = create_app(settings, engine=engine, background=False)
    app.state.clock = lambda: NOW
    return TestClient(app)


@pytest.fixture
def client(engine, tmp_path):
    with make_client(engine, tmp_path) as c:
        yield c


class Chat:
    """One simulated person: sends like the page's JavaScript does, remembers the last bot messages."""

    def __init__(self, client: TestClient, chat_id: str) -> None:
        self.client, self.chat_id, self.n, self.last = client, chat_id, 0, []

    def send(self, kind: str = "text", text: str = "", value: str = "", msg_id: str | None = None) -> dict:
        self.n += 1
        resp = self.client.post("/simulator/api/send", json={
            "chat_id": self.chat_id, "kind": kind, "text": text, "value": value,
            "client_msg_id": msg_id or f"m{self.n}"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if body["messages"]:
            self.last = body["messages"]
        return body

    def say(self, text: str) -> dict:
        return self.send("text", text)

    def buttons(self) -> list[str]:
        return [b["label"] for b in self.last[-1]["buttons"]]

    def tap(self, label: str) -> dict:
        for message in reversed(self.last):
            for button in message["buttons"]:
                if button["label"] == label:
                    return self.send("button", text=label, value=button["value"])
        raise AssertionError(f"no button {label!r} in {[m['text'] for m in self.last]}")

    def photo(self, data: bytes, msg_id: str | None = None) -> dict:
        self.n += 1
        resp = self.client.post("/simulator/api/photo",
                                data={"chat_id": self.chat_id, "client_msg_id": msg_id or f"p{self.n}"},
                                files={"file": ("photo.jpg", data, "image/jpeg")})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if body["messages"]:
            self.last = body["messages"]
        return body

    def text(self) -> str:
        return "\n".join(m["text"] for m in self.last)


def register_family(chat: Chat, name: str = "Trần Văn Tâm") -> None:
    chat.say("/start")
    chat.tap(t("btn.role_household"))
    chat.say("gia loc")
    chat.tap("Gia Lộc – Hải Phòng")
    chat.tap("Thôn Phú Lộc")
    chat.say(name)
    chat.say("4")
    chat.say("0912 345 678")
    chat.tap(t("btn.agree"))


def count(engine, model, *where) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())


# ---------------------------------------------------------------------------------------------- pages


def test_home_page_explains_and_links(client) -> None:
    html = client.get("/").text
    assert "Gia đình học tập" in html and "learning-titles campaign" in html
    for link in ('href="/simulator"', 'href="/review/"', 'href="/docs"'):
        assert link in html
    assert "Xã Gia Lộc (demo)" in html
    assert "<code>demo</code> / <code>demo</code>" in html
    assert "Telegram: <b>tắt (chưa có token)</b>" in " ".join(html.split())
    assert "/simulator?start=v_demophuloc" in html


def test_home_page_hides_demo_sign_in_outside_demo_mode(engine, tmp_path) -> None:
    with make_client(engine, tmp_path, demo=False) as c:
        html = c.get("/").text
    assert "/simulator" in html
    assert "<code>demo</code> / <code>demo</code>" not in html


def test_simulator_page_lists_personas(client) -> None:
    html = client.get("/simulator").text
    assert "Trình mô phỏng" in html and "(demo)" in html
    for persona in PERSONAS:
        assert f'value="{persona.chat_id}"' in html
    assert "/static/simulator.js" in html
    assert client.get("/static/simulator.js").status_code == 200
    assert client.get("/static/simulator.css").status_code == 200


def test_personas_api(client) -> None:
    personas = client.get("/simulator/api/personas").json()
    assert [p["chat_id"] for p in personas] == [p.chat_id for p in PERSONAS]
    assert {p["role"] for p in personas} == {"household", "clan_head", "village_leader", "officer"}


# ---------------------------------------------------------------------------------------------- conversation


def test_start_offers_roles_as_buttons_and_marks_messages_sent(client, engine) -> None:
    chat = Chat(client, "web-one")
    body = chat.say("/start")
    assert body["messages"][0]["text"] == t("start.hello")
    assert chat.buttons()[0] == t("btn.role_household") and t("btn.role_officer") in chat.buttons()
    assert body["last_id"] == body["messages"][-1]["id"]
    with Session(engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == "web-one")).all()
        assert {r.channel for r in rows} == {"web"} and {r.status for r in rows} == {"sent"}
        inbox = session.exec(select(InboxUpdate).where(InboxUpdate.channel == "web")).one()
        assert (inbox.update_id, inbox.chat_key, inbox.status) == ("web-one:m1", "web-one", "done")


def test_register_a_family_by_tapping_and_typing(client, engine) -> None:
    chat = Chat(client, "web-family")
    register_family(chat)
    assert "Trần Văn Tâm" in chat.text()
    chat.tap(t("btn.register"))
    assert "Đã đăng ký phấn đấu" in chat.text()
    with Session(engine) as session:
        identity = session.exec(select(ChatIdentity).where(ChatIdentity.user_id == "web-family")).one()
        assert identity.channel == "web" and identity.chat_id == "web-family"
        person = session.get(Person, identity.person_id)
        assert (person.name, person.phone, person.commune_code) == ("Trần Văn Tâm", "+84912345678", 10999)
        household = session.exec(select(Household).where(Household.head_person_id == person.id)).one()
        assert household.village_id is not None
        assert session.exec(select(Registration.title).where(
            Registration.subject_type == "household", Registration.subject_id == household.id)).all() == ["gia_dinh"]


def test_phone_step_asks_for_contact_and_accepts_a_shared_contact(client, engine) -> None:
    chat = Chat(client, "web-contact")
    chat.say("/start")
    chat.tap(t("btn.role_household"))
    chat.say("gia loc")
    chat.tap("Gia Lộc – Hải Phòng")
    chat.tap("Thôn Đông Cận")
    chat.say("Lý Thị Thu")
    body = chat.say("3")
    assert body["messages"][-1]["request_contact"] is True
    chat.send("contact", text="+84 987 654 321")
    assert t("btn.agree") in chat.buttons()


def test_invite_link_starts_in_the_village(client) -> None:
    chat = Chat(client, "web-invite")
    body = chat.say("/start v_demodongcan")
    assert "Thôn Đông Cận" in body["messages"][0]["text"]


def test_typed_free_text_and_no_diacritics_work(client) -> None:
    chat = Chat(client, "web-typed")
    chat.say("/start")
    chat.say("1")  # the first button, typed as a digit
    assert t("signup.ask_commune") in chat.text()


def test_resending_the_same_client_msg_id_writes_nothing_twice(client, engine) -> None:
    chat = Chat(client, "web-twice")
    first = chat.send("text", "/start", msg_id="same-1")
    tables = (OutboxMessage, InboxUpdate, AuditLog, ChatIdentity)
    before = {m.__name__: count(engine, m) for m in tables}
    again = chat.send("text", "/start", msg_id="same-1")
    assert again["duplicate"] is True and first["duplicate"] is False
    assert [m["id"] for m in again["messages"]] == [m["id"] for m in first["messages"]]
    assert {m.__name__: count(engine, m) for m in tables} == before
    # a resend of a button press in the middle of sign-up does not move the conversation twice
    tapped = chat.tap(t("btn.role_household"))
    resent = chat.send("button", text=t("btn.role_household"), value="role:household", msg_id=f"m{chat.n}")
    assert resent["duplicate"] is True
    assert [m["id"] for m in resent["messages"]] == [m["id"] for m in tapped["messages"]]


def test_send_with_after_returns_everything_new_for_the_chat(client, engine) -> None:
    chat = Chat(client, "web-after")
    first = chat.say("/start")
    with Session(engine) as session:
        enqueue(session, channel="web", chat_id="web-after", message=Say("⏰ Nhắc việc"), idempotency_key="r1",
                priority=PRIORITY_BULK, not_before=NOW)
        session.commit()
    resp = client.post("/simulator/api/send", json={"chat_id": "web-after", "kind": "button", "text": "x",
                                                    "value": "role:household", "client_msg_id": "b1",
                                                    "after": first["last_id"]})
    texts = [m["text"] for m in resp.json()["messages"]]
    assert texts[0] == "⏰ Nhắc việc" and t("signup.ask_commune") in texts


def test_messages_queued_by_others_reach_the_simulator_once(client, engine) -> None:
    chat = Chat(client, "demo-family")
    start = chat.say("/start")
    last_id = start["last_id"]
    with Session(engine) as session:
        # a reminder from the scheduler, and a decision from an officer, queued for the web chat
        enqueue(session, channel="web", chat_id="demo-family", message=Say("⏰ Tháng 11 rồi", ()),
                idempotency_key="campaign:assessment:2026:demo-family", priority=PRIORITY_BULK,
                not_before=NOW)
        enqueue(session, channel="telegram", chat_id="123", message=Say("not for the web"), idempotency_key="tg-1",
                not_before=NOW)
        session.commit()
    got = client.get("/simulator/api/messages", params={"chat_id": "demo-family", "after": last_id}).json()
    assert [m["text"] for m in got["messages"]] == ["⏰ Tháng 11 rồi"]
    assert got["last_id"] > last_id
    assert client.get("/simulator/api/messages", params={"chat_id": "demo-family", "after": got["last_id"]}).json()[
        "messages"] == []
    assert count(engine, OutboxMessage, OutboxMessage.idempotency_key == "tg-1", OutboxMessage.status == "queued") == 1
    assert count(engine, OutboxMessage, OutboxMessage.channel == "web", OutboxMessage.status != "sent") == 0


def test_messages_not_yet_due_wait(client, engine) -> None:
    with Session(engine) as session:
        enqueue(session, channel="web", chat_id="web-later", message=Say("sáng mai"), idempotency_key="later",
                not_before=datetime(2026, 11, 21, 1, 0, tzinfo=UTC))
        session.commit()
    assert client.get("/simulator/api/messages", params={"chat_id": "web-later"}).json()["messages"] == []


def test_chats_are_separate(client) -> None:
    a, b = Chat(client, "web-a"), Chat(client, "web-b")
    a.say("/start")
    a.tap(t("btn.role_household"))
    b_first = b.say("/start")
    assert [m["text"] for m in b_first["messages"]] == [t("start.hello")]
    assert client.get("/simulator/api/messages", params={"chat_id": "web-b", "after": b_first["last_id"]}).json()[
        "messages"] == []


def test_persona_is_recognised(client) -> None:
    chat = Chat(client, "demo-family")
    chat.say("/start")
    assert "Nguyễn Văn An" in chat.text()


def test_history_has_both_sides_in_order(client) -> None:
    chat = Chat(client, "web-history")
    chat.say("/start")
    chat.tap(t("btn.role_household"))
    items = client.get("/simulator/api/history", params={"chat_id": "web-history"}).json()["items"]
    sides = [i["side"] for i in items]
    assert sides[0] == "user" and items[0]["text"] == "/start"
    assert sides.index("bot") == 1 and sides.count("user") == 2
    assert items[-1]["text"] == t("signup.ask_commune")


def test_rejects_bad_ids_and_empty_text(client) -> None:
    for chat_id, msg_id, text in (("bad id", "m1", "hi"), ("web-x", "m/1", "hi"), ("web-x", "m1", "  ")):
        resp = client.post("/simulator/api/send", json={"chat_id": chat_id, "kind": "text", "text": text,
                                                        "client_msg_id": msg_id})
        assert resp.status_code == 422, (chat_id, msg_id, text)
    assert client.get("/simulator/api/messages", params={"chat_id": "<script>"}).status_code == 422


# ---------------------------------------------------------------------------------------------- photos


def test_photo_is_stored_and_reaches_the_flow(client, engine, tmp_path) -> None:
    chat = Chat(client, "web-photo")
    register_family(chat)
    chat.tap(t("btn.register"))
    chat.tap(t("btn.assess"))
    while "cần ảnh" not in chat.text():  # answer until the study-corner question asks for a photo
        labels = chat.buttons()
        chat.tap(t("btn.skip") if "📷" in chat.last[-1]["text"] else ("Có" if "Có" in labels else labels[0]))
    data = _demo_jpeg(4242, label="web")
    body = chat.photo(data)
    assert body["refused"] is None and "📷" in body["messages"][0]["text"]
    assert chat.photo(data, msg_id=f"p{chat.n}")["duplicate"] is True
    with Session(engine) as session:
        evidence = session.exec(select(Evidence).where(Evidence.criterion == "c3_2")).all()
        mine = [e for e in evidence if e.width == 640 and e.sent_by is not None]
    sha = hashlib.sha256(data).hexdigest()
    assert [e.sha256 for e in mine if e.sha256 == sha] == [sha]
    assert (tmp_path / "media" / f"{sha[:2]}/{sha}.jpg").read_bytes() == data


def test_not_an_image_is_refused_with_the_channel_text(client, engine) -> None:
    chat = Chat(client, "web-refused")
    chat.say("/start")
    evidence = count(engine, Evidence)
    body = chat.photo(b"%PDF-1.4 this is not a photo")
    assert body["refused"] == t("channel.photo_not_image")
    assert body["messages"][-1]["text"] == t("channel.photo_not_image")
    assert count(engine, Evidence) == evidence
    with Session(engine) as session:
        inbox = session.exec(select(InboxUpdate).where(InboxUpdate.chat_key == "web-refused",
                                                       InboxUpdate.status == "ignored")).one()
        assert inbox.payload["refused"] == "channel.photo_not_image"


def test_too_big_photo_is_refused(engine, tmp_path) -> None:
    data = _demo_jpeg(1, label="big")
    with make_client(engine, tmp_path, photo_max_bytes=1000) as c:
        body = Chat(c, "web-big").photo(data)
    assert body["refused"] == t("channel.photo_too_big")
    assert body["messages"][-1]["text"] == t("channel.photo_too_big")
    assert not list((tmp_path / "media").rglob(hashlib.sha256(data).hexdigest() + "*"))


def test_an_officers_decision_reaches_the_web_chat(client, engine) -> None:
    from models.tables import Assessment, Officer
    from webhook.admin import record_decision

    chat = Chat(client, "demo-returned")
    last_id = chat.say("/start")["last_id"]
    with Session(engine) as session:
        identity = session.exec(select(ChatIdentity).where(ChatIdentity.user_id == "demo-returned")).one()
        household = session.exec(select(Household).where(Household.head_person_id == identity.person_id)).one()
        assessment = session.exec(select(Assessment).where(
            Assessment.subject_type == "household", Assessment.subject_id == household.id,
            Assessment.year == 2026)).one()
        officer = session.exec(select(Officer).where(Officer.username == "demo")).one()
        record_decision(session, assessment, officer=officer, decision="recognise", now=NOW)
        session.commit()
    got = client.get("/simulator/api/messages", params={"chat_id": "demo-returned", "after": last_id}).json()
    assert len(got["messages"]) == 1 and "Gia đình học tập" in got["messages"][0]["text"]


def test_a_refusal_is_also_delivered_by_polling(client) -> None:
    resp = client.post("/simulator/api/photo", data={"chat_id": "web-poll", "client_msg_id": "p1", "after": "0"},
                       files={"file": ("x.jpg", b"nope", "image/jpeg")})
    assert [m["text"] for m in resp.json()["messages"]] == [t("channel.photo_not_image")]
    history = client.get("/simulator/api/history", params={"chat_id": "web-poll"}).json()["items"]
    assert [(i["side"], i["photo"]) for i in history] == [("user", True), ("bot", False)]


def test_without_the_demo_the_pages_work_and_list_no_personas(engine, tmp_path) -> None:
    settings = get_settings(data_dir=tmp_path, database_url="", demo=False)
    with TestClient(create_app(settings, engine=engine, background=False)) as c:
        assert c.get("/simulator/api/personas").json() == []
        html = c.get("/simulator").text
        assert "(demo)" not in html and 'value="demo-family"' not in c.get("/simulator").text
        assert "(demo)" not in c.get("/").text
        assert Chat(c, "web-plain").say("/start")["messages"][0]["text"] == t("start.hello")
