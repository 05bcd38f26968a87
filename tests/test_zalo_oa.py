"""Zalo Official Account: signature, route, rendering, tokens (single-use refresh across a restart),
error codes (-230, -216, -224...), and a household from "follow" to a submitted self-assessment over real
HTTP to the fake Zalo OA server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from bot import zalo_oa
from bot.inbox import Inbound, InboxWorker
from bot.outbox import OutboxSender, enqueue
from bot.scheduler import unreachable_report
from flows.i18n import t
from flows.types import Button, Event, Say
from models.settings import Settings, get_settings
from models.tables import (
    AuditLog,
    ChannelCredential,
    ChatIdentity,
    InboxUpdate,
    OutboxMessage,
    Person,
    RoleGrant,
)
from tests.fakes import zalo_server as zs
from tests.fakes.zalo_server import FakeZaloOA, Resident, check_submitted, jpeg, register_and_submit, seed
from webhook.app import create_app


@pytest.fixture
def fake() -> Iterator[FakeZaloOA]:
    with FakeZaloOA().running() as server:
        yield server


def oa_settings(tmp_path: Path, fake: FakeZaloOA | None = None, **overrides: Any) -> Settings:
    base = fake.base_url if fake else "http://127.0.0.1:9"
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "zalo_oa_app_id": zs.OA_APP_ID,
        "zalo_oa_secret_key": zs.OA_SECRET,
        "zalo_oa_refresh_token": fake.issue_refresh_token() if fake else "RT-seed",
        "zalo_oa_api_base_url": base,
        "zalo_oa_oauth_base_url": base,
    }
    values.update(overrides)
    return get_settings(**values)


def rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).order_by(model.id)))


class Driven:
    def __init__(self, settings: Settings, engine: Engine, fake: FakeZaloOA) -> None:
        self.settings, self.engine, self.fake = settings, engine, fake
        self.app = create_app(settings, engine=engine, background=False)

    async def __aenter__(self) -> Driven:
        self.channel = zalo_oa.ZaloOAChannel(settings=self.settings, engine=self.engine)
        self.worker = InboxWorker(engine=self.engine, settings=self.settings, backoff=lambda n: 0.0)
        self.worker.add_channel(zalo_oa.CHANNEL, self.channel.normalise)
        self.sender = OutboxSender(engine=self.engine, channel=zalo_oa.CHANNEL, transport=self.channel.transport,
                                   rate_per_second=500.0, per_chat_interval=0.0)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://hoctap")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.channel.aclose()

    async def post(self, event: dict[str, Any], *, drive: bool = True) -> None:
        body, headers = zs.oa_signed(event)
        resp = await self.client.post("/webhooks/zalo-oa", content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        if drive:
            await self.worker.run_once()
            await self.sender.run_once()

    def person(self, user_id: str) -> OAResident:
        async def answer(event: dict[str, Any]) -> str:
            before = len(self.fake.sent(user_id))
            await self.post(event)
            return "\n".join(self.fake.sent_texts(user_id)[before:])

        async def say(text: str) -> str:
            return await answer(zs.oa_text(user_id, text))

        async def photo() -> str:
            return await answer(zs.oa_image(user_id, self.fake.image_url("tu-sach.jpg", jpeg())))

        return OAResident(say, photo, self.fake, user_id)


class OAResident(Resident):
    """Taps real buttons (oa.query.hide: Zalo sends their payload back as the user's text) when the OA
    message has them; types the number when the buttons came as a numbered list (more than 5)."""

    def __init__(self, say: Any, photo: Any, fake: FakeZaloOA, user_id: str) -> None:
        super().__init__(say, photo)
        self.fake, self.user_id = fake, user_id
        self.taps = 0

    async def pick(self, label: str) -> str:
        messages = self.fake.sent(self.user_id)
        buttons = (messages[-1].get("attachment") or {}).get("payload", {}).get("buttons", []) if messages else []
        for button in buttons:
            if button["title"] == label or button["title"].startswith(label):
                assert button["type"] == "oa.query.hide"
                self.taps += 1
                self.digits += 1
                return await self.say(button["payload"])
        return await super().pick(label)


# --- signature and route -----------------------------------------------------------------------------------


def test_signature_formula() -> None:
    body = b'{"event_name":"user_send_text","timestamp":"1700000000000"}'
    expected = hashlib.sha256(b"4321" + body + b"1700000000000" + b"oa-secret").hexdigest()
    assert zalo_oa.signature("4321", body, "1700000000000", "oa-secret") == expected
    assert expected == hashlib.sha256(("4321" + body.decode() + "1700000000000oa-secret").encode()).hexdigest()


def test_verify_accepts_the_mac_prefix_and_nothing_else(tmp_path) -> None:
    settings = oa_settings(tmp_path)
    event = zs.oa_text("u1", "co")
    body, headers = zs.oa_signed(event)
    mac = headers["X-ZEvent-Signature"]
    assert zalo_oa.verify(settings, body, event, mac)
    assert zalo_oa.verify(settings, body, event, mac.removeprefix("mac="))
    assert zalo_oa.verify(settings, body, event, mac.upper().replace("MAC=", "mac="))
    assert not zalo_oa.verify(settings, body + b" ", event, mac)  # the raw bytes count
    assert not zalo_oa.verify(settings, body, {**event, "timestamp": "1"}, mac)
    assert not zalo_oa.verify(settings, body, event, "")
    assert not zalo_oa.verify(oa_settings(tmp_path, zalo_oa_secret_key="other"), body, event, mac)


def test_route_rejects_bad_signatures_and_stores_nothing(engine, tmp_path) -> None:
    app = create_app(oa_settings(tmp_path), engine=engine, background=False)
    event = zs.oa_text("u1", "xin chào")
    body, headers = zs.oa_signed(event)
    with TestClient(app) as client:
        assert client.post("/webhooks/zalo-oa", content=body,
                           headers={"Content-Type": "application/json"}).status_code == 401
        wrong = {**headers, "X-ZEvent-Signature": "mac=" + "0" * 64}
        assert client.post("/webhooks/zalo-oa", content=body, headers=wrong).status_code == 401
        other_key_body, other_key = zs.oa_signed(event, secret="not-our-secret")
        assert client.post("/webhooks/zalo-oa", content=other_key_body, headers=other_key).status_code == 401
        tampered = body.replace("xin chào".encode(), b"xin chao")
        assert client.post("/webhooks/zalo-oa", content=tampered, headers=headers).status_code == 401
        foreign = {**event, "app_id": "999"}
        foreign_body, foreign_headers = zs.oa_signed(foreign)  # signed with our app id, names another app
        assert client.post("/webhooks/zalo-oa", content=foreign_body, headers=foreign_headers).status_code == 403
        for junk in (b"not json", b"\xff\xfe", b"[1]"):
            assert client.post("/webhooks/zalo-oa", content=junk, headers=headers).status_code == 400
        assert rows(engine, InboxUpdate) == []
        assert client.post("/webhooks/zalo-oa", content=body, headers=headers).json() == {"ok": True}
        assert client.post("/webhooks/zalo-oa", content=body, headers=headers).status_code == 200  # Zalo retries
        seen = zs.oa_event("user_seen_message", "u1", message={"msg_ids": ["x"]})
        assert client.post("/webhooks/zalo-oa", content=zs.oa_signed(seen)[0],
                           headers=zs.oa_signed(seen)[1]).status_code == 200
    stored = rows(engine, InboxUpdate)
    assert [(r.channel, r.update_id, r.chat_key) for r in stored] == [
        ("zalo_oa", event["message"]["msg_id"], "u1")
    ]


def test_route_is_404_when_the_oa_is_off(engine, tmp_path) -> None:
    app = create_app(oa_settings(tmp_path, zalo_oa_app_id=""), engine=engine, background=False)
    body, headers = zs.oa_signed(zs.oa_text("u1", "a"))
    with TestClient(app) as client:
        assert client.post("/webhooks/zalo-oa", content=body, headers=headers).status_code == 404


# --- rendering and normalising -------------------------------------------------------------------------------


def test_up_to_five_buttons_are_oa_query_hide_buttons_more_become_numbers() -> None:
    say = Say("Anh/Chị đồng ý?", (Button("Đồng ý", "yes"), Button("Không đồng ý", "no")))
    assert zalo_oa.render(say) == [{
        "text": "Anh/Chị đồng ý?",
        "attachment": {"type": "template", "payload": {"buttons": [
            {"title": "Đồng ý", "type": "oa.query.hide", "payload": "#hoctap:yes"},
            {"title": "Không đồng ý", "type": "oa.query.hide", "payload": "#hoctap:no"},
        ]}},
    }]
    six = Say("Câu 2/10", tuple(Button(f"Nút {n}", f"v{n}") for n in range(1, 7)))
    [message] = zalo_oa.render(six)
    assert "attachment" not in message and "1. Nút 1" in message["text"] and "6. Nút 6" in message["text"]
    long = zalo_oa.render(Say("Dài. " * 900, (Button("Xong", "done"),)))
    assert len(long) == 3 and all(len(m["text"]) <= 2000 for m in long)
    assert "attachment" in long[-1] and all("attachment" not in m for m in long[:-1])


def test_normaliser_events(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)

    async def go() -> list[Inbound]:
        channel = zalo_oa.ZaloOAChannel(settings=settings, engine=engine)
        try:
            payloads = [
                zs.oa_text("u1", "co"),
                zs.oa_text("u1", "#hoctap:role:household"),
                zs.oa_text("u1", "/huy"),
                zs.oa_follow("u1"),
                zs.oa_event("unfollow", "u1", follower={"id": "u1"}),
                zs.oa_image("u1", fake.image_url("a.jpg", jpeg())),
                zs.oa_event("user_send_sticker", "u1", message={"msg_id": "s1"}),
                zs.oa_event("user_submit_info", "u1", info={"name": "Lan", "phone": "0912345678"}),
                zs.oa_event("oa_send_text", "u1", message={"msg_id": "o1", "text": "x"}),
            ]
            return [await channel.normalise(p) for p in payloads]
        finally:
            await channel.aclose()

    text, button, command, follow, unfollow, image, sticker, info, own = asyncio.run(go())
    assert text == Inbound(chat_id="u1", event=Event(kind="text", text="co"), user_id="u1")
    assert button.event == Event(kind="button", value="role:household", text="")
    assert command.event == Event(kind="command", text="huy")
    assert follow.event == Event(kind="command", text="start")
    assert unfollow == Inbound() and own == Inbound()
    assert image.event is not None and image.event.kind == "photo"
    assert sticker.event == Event(kind="unsupported", value="sticker")
    assert info.event == Event(kind="contact", text="0912345678")
    assert fake.images.fetched == ["a.jpg"]


# --- end to end ----------------------------------------------------------------------------------------------


def test_household_follows_registers_answers_sends_a_photo_and_submits(engine, tmp_path, fake) -> None:
    seed(engine)
    settings = oa_settings(tmp_path, fake)

    async def story() -> OAResident:
        async with Driven(settings, engine, fake) as app:
            await app.post(zs.oa_follow("oa-user-1"))
            assert "Chào Anh/Chị!" in fake.sent_texts("oa-user-1")[-1]
            person = app.person("oa-user-1")
            await register_and_submit(person)
            return person

    person = asyncio.run(story())
    assert person.taps >= 5 and person.words >= 5
    check_submitted(engine)
    outbox = [r for r in rows(engine, OutboxMessage) if r.channel == "zalo_oa"]
    assert {r.status for r in outbox} == {"sent"}
    assert len(fake.sent()) == len(outbox)
    # one token refresh for the whole conversation, with the seed refresh token
    assert [c.params["refresh_token"] for c in fake.calls_of("oauth")] == [settings.zalo_oa_refresh_token.get_secret_value()]
    assert {c.headers["access_token"] for c in fake.calls_of("cs")} == {"AT2"}


def test_duplicated_events_are_processed_once(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)
    event = zs.oa_text("dup", "Xin chào")

    async def story() -> None:
        async with Driven(settings, engine, fake) as app:
            await app.post(event, drive=False)
            await app.post(event, drive=False)
            await app.post(event)
            await app.post(event)

    asyncio.run(story())
    assert len(fake.sent_texts("dup")) == 1
    assert [r.status for r in rows(engine, InboxUpdate)] == ["done"]


# --- tokens --------------------------------------------------------------------------------------------------


def _queue(engine: Engine, user: str, text: str = "Nhắc việc", key: str | None = None, person_id: int | None = None) -> None:
    with Session(engine) as session:
        enqueue(session, channel="zalo_oa", chat_id=user, message=Say(text), idempotency_key=key or f"k:{user}:{text}",
                person_id=person_id, priority=10)
        session.commit()


def _send(settings: Settings, engine: Engine, *, now: Any = None) -> None:
    async def go() -> None:
        kwargs = {"now": now} if now else {}
        channel = zalo_oa.ZaloOAChannel(settings=settings, engine=engine,
                                        tokens=zalo_oa.OATokens(settings, engine, **kwargs))
        try:
            sender = OutboxSender(engine=engine, channel=zalo_oa.CHANNEL, transport=channel.transport,
                                  rate_per_second=500.0, per_chat_interval=0.0)
            await sender.run_once()
        finally:
            await channel.aclose()

    asyncio.run(go())


def _credential(engine: Engine) -> dict[str, Any]:
    with Session(engine) as session:
        row = session.exec(select(ChannelCredential).where(ChannelCredential.channel == "zalo_oa")).one()
        return dict(row.data)


def test_token_refresh_across_a_restart_uses_each_refresh_token_once(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)
    seed_token = settings.zalo_oa_refresh_token.get_secret_value()
    _queue(engine, "u1", "một")
    _send(settings, engine)  # process 1: first refresh, with the seed
    stored = _credential(engine)
    assert stored["refresh_token"] == "RT2" and stored["access_token"] == "AT2"
    assert stored["seed_sha"] == hashlib.sha256(seed_token.encode()).hexdigest()
    assert seed_token not in str(stored)  # the used seed is not kept

    # "restart": a new process, same database and same environment (the seed is still in .env)
    _queue(engine, "u1", "hai")
    _send(settings, engine)
    assert [c.params["refresh_token"] for c in fake.calls_of("oauth")] == [seed_token]  # token still fresh

    # 25 hours later: the access token is about to expire; a new process refreshes with RT2, never the seed
    later = datetime.now(UTC) + timedelta(hours=25)
    _queue(engine, "u1", "ba")
    _send(settings, engine, now=lambda: later)
    assert [c.params["refresh_token"] for c in fake.calls_of("oauth")] == [seed_token, "RT2"]
    assert _credential(engine)["refresh_token"] == "RT3"
    assert [c.status for c in fake.calls_of("oauth")] == [200, 200]
    assert fake.sent_texts("u1") == ["một", "hai", "ba"]
    assert fake.refresh_used.count(seed_token) == 1 and fake.refresh_used.count("RT2") == 1


def test_refresh_under_a_lock_happens_once_for_concurrent_sends(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)
    for n in range(6):
        _queue(engine, f"user{n}", f"tin {n}")
    _send(settings, engine)
    assert len(fake.calls_of("oauth")) == 1
    assert len(fake.sent()) == 6


def test_an_expired_access_token_is_refreshed_and_the_send_retried(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)
    _queue(engine, "u1", "một")
    _send(settings, engine)
    fake.expire_access_tokens()  # Zalo revoked it before its time: -216
    _queue(engine, "u1", "hai")
    _send(settings, engine)
    assert fake.sent_texts("u1") == ["một", "hai"]
    assert len(fake.calls_of("oauth")) == 2
    assert [c.status for c in fake.calls_of("cs")] == [0, -216, 0]


def test_a_failed_refresh_keeps_messages_and_alerts_officers(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake, zalo_oa_refresh_token="RT-already-used")
    with Session(engine) as session:
        officer = Person(name="Cán bộ Hà")
        session.add(officer)
        session.flush()
        session.add(RoleGrant(person_id=officer.id or 0, role="officer", status="granted"))
        session.add(ChatIdentity(channel="telegram", user_id="of1", chat_id="of1", person_id=officer.id))
        session.commit()
    _queue(engine, "u1", "một")
    _send(settings, engine)
    row = next(r for r in rows(engine, OutboxMessage) if r.channel == "zalo_oa")
    assert row.status == "queued" and row.attempts == 0  # kept for later, not counted as a failure
    alerts = [r for r in rows(engine, OutboxMessage) if r.channel == "telegram"]
    assert [Say.from_json(r.payload).text for r in alerts] == [t("zalo.oa_alert_refresh")]
    assert _credential(engine)["refresh_error"].startswith("refresh refused (error -14020")
    _send(settings, engine)  # the same day: no second alert
    assert len([r for r in rows(engine, OutboxMessage) if r.channel == "telegram"]) == 1
    # the admin authorises again and puts the new refresh token in the environment: adopted, message sent
    fresh = oa_settings(tmp_path, fake, zalo_oa_refresh_token=fake.issue_refresh_token())
    with Session(engine) as session:
        from sqlalchemy import update

        session.execute(update(OutboxMessage).values(not_before=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()
    _send(fresh, engine)
    assert fake.sent_texts("u1") == ["một"]
    assert "refresh_error" not in _credential(engine)


# --- error codes ---------------------------------------------------------------------------------------------


def test_outside_the_7_day_window_the_message_is_marked_for_the_village_leader(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)
    with Session(engine) as session:
        from bot.uow import ensure_commune

        ensure_commune(session, 10999)
        person = Person(name="Phạm Thị Mai", commune_code=10999)
        session.add(person)
        session.flush()
        session.add(RoleGrant(person_id=person.id or 0, role="household", status="granted", commune_code=10999))
        session.add(ChatIdentity(channel="zalo_oa", user_id="mai", chat_id="mai", person_id=person.id))
        session.commit()
        person_id = person.id
    fake.window_closed.add("mai")
    _queue(engine, "mai", "⏰ Tháng 11 rồi", person_id=person_id)
    _send(settings, engine)
    row = next(r for r in rows(engine, OutboxMessage) if r.channel == "zalo_oa")
    assert row.status == "unreachable" and "(-230)" in (row.last_error or "")
    assert t("zalo.reason_window") in (row.last_error or "")
    with Session(engine) as session:
        report = unreachable_report(session, commune_code=10999)
        person = session.get(Person, person_id)
        assert person is not None and "(-230)" in (person.unreachable_reason or "")
    assert [(u.name, u.person_id) for u in report] == [("Phạm Thị Mai", person_id)]
    assert fake.sent() == []


def test_other_codes_map_to_clear_outcomes(engine, tmp_path, fake) -> None:
    settings = oa_settings(tmp_path, fake)

    async def go() -> dict[int, str]:
        channel = zalo_oa.ZaloOAChannel(settings=settings, engine=engine)
        out = {}
        try:
            for code in (-213, -224, -32, -201, -999):
                fake.cs_error_next(code)
                try:
                    await channel.transport.send("u1", Say("a").to_json())
                    out[code] = "sent"
                except Exception as exc:  # noqa: BLE001
                    out[code] = type(exc).__name__
        finally:
            await channel.aclose()
        return out

    assert asyncio.run(go()) == {-213: "UnreachableError", -224: "RetryAfterError", -32: "RetryAfterError",
                                 -201: "PermanentError", -999: "TransientError"}
    with Session(engine) as session:
        targets = [a.target for a in session.exec(select(AuditLog).where(AuditLog.action == "channel.alert"))]
    assert any(target.startswith("zalo_oa:alert:config:-224:") for target in targets)


def test_tokens_and_texts_never_reach_the_logs(engine, tmp_path, fake, caplog) -> None:
    caplog.set_level("DEBUG")
    settings = oa_settings(tmp_path, fake)
    _queue(engine, "u1", "Bí mật gia đình")
    _send(settings, engine)
    fake.window_closed.add("u2")
    _queue(engine, "u2", "Bí mật gia đình")
    _send(settings, engine)
    for secret in ("AT2", "RT2", settings.zalo_oa_refresh_token.get_secret_value(), zs.OA_SECRET, "Bí mật"):
        assert secret not in caplog.text


def test_register_adds_the_channel_only_when_configured(engine, tmp_path) -> None:
    from bot.runtime import Runtime

    runtime = Runtime(settings=oa_settings(tmp_path), engine=engine)
    channel = zalo_oa.register(runtime)
    assert channel is not None and "zalo_oa" in runtime.extra
    asyncio.run(channel.aclose())
    off = Runtime(settings=oa_settings(tmp_path, zalo_oa_secret_key=""), engine=engine)
    assert zalo_oa.register(off) is None


def test_background_runtime_webhook(engine, tmp_path, fake) -> None:
    import time

    settings = oa_settings(tmp_path, fake)
    app = create_app(settings, engine=engine)
    assert "zalo_oa" in app.state.runtime.extra  # registered by create_app
    with TestClient(app) as client:
        body, headers = zs.oa_signed(zs.oa_follow("live-oa"))
        assert client.post("/webhooks/zalo-oa", content=body, headers=headers).status_code == 200
        deadline = time.monotonic() + 15
        while not fake.sent_texts("live-oa"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert fake.sent_texts("live-oa")[0].startswith("Chào Anh/Chị!")
    assert len(fake.calls_of("oauth")) == 1  # the keep-alive and the send share one refresh
